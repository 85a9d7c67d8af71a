"""The real CLI in subprocesses: an end-to-end run that resumes, and bad input."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from idx_files import write_mnist_dir, write_pair

from bn_repro.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory) -> pathlib.Path:
  return write_mnist_dir(tmp_path_factory.mktemp("idx"), train=96, test=30)


def cli(workdir, *overrides, config="mnist_mlp:bn_sigmoid"):
  cmd = [
    sys.executable,
    "-m",
    "bn_repro.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides,
  ]
  return subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ)
  )


def tiny(idx_dir, *extra):
  return (
    "--config.data.source=idx",
    f"--config.data.idx_dir={idx_dir}",
    "--config.model.hidden=(16, 16)",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    "--config.log_every=4",
    "--config.eval_every=4",
    "--config.checkpoint_every=4",
    "--config.tensorboard=False",
    *extra,
  )


@pytest.mark.slow
def test_run_writes_metrics_and_checkpoints_and_resumes_exactly(tmp_path, tiny_idx):
  straight = tmp_path / "straight"
  r = cli(straight, *tiny(tiny_idx, "--config.num_steps=12"))
  assert r.returncode == 0, r.stderr
  assert json.loads((straight / "status.json").read_text())["status"] == "done"
  assert sorted(os.listdir(straight / "checkpoints")) == ["12", "4", "8"]
  assert json.loads((straight / "config.json").read_text())["batch_size"] == 16

  resumed = tmp_path / "resumed"
  assert cli(resumed, *tiny(tiny_idx, "--config.num_steps=8")).returncode == 0
  r = cli(resumed, *tiny(tiny_idx, "--config.num_steps=12"))
  assert r.returncode == 0, r.stderr
  assert "Resumed from the checkpoint at step 8" in r.stderr

  a, b = RunDir(straight).metrics(), RunDir(resumed).metrics()
  assert [e["step"] for e in a] == [0, 4, 8, 12] == [e["step"] for e in b]
  for ea, eb in zip(a, b):
    for k in ("train/loss", "eval/accuracy", "eval/loss", "probe/p50"):
      if k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=1e-6, err_msg=f"{k} at {ea['step']}")


BAD_INPUT = [
  (
    "unknown key",
    ["--config.learning_rate=0.1"],
    "unknown config field 'learning_rate' in --config.learning_rate",
  ),
  ("learning rate 0", ["--config.optimizer.learning_rate=0"], "config.optimizer.learning_rate"),
  ("negative steps", ["--config.num_steps=-5"], "config.num_steps"),
  ("batch 0", ["--config.batch_size=0"], "config.batch_size"),
  ("batch not divisible", ["--config.batch_size=60", "--config.num_devices=8"], "8 devices"),
  (
    "one value per statistic",
    ["--config.batch_size=8", "--config.bn.cross_device=False", "--config.num_devices=8"],
    "config.batch_size",
  ),
  ("batch over the split", ["--config.batch_size=128"], "larger than the training split"),
  ("batch across an epoch repeats", ["--config.batch_size=64"], "fewer than two batches"),
  ("labels over the classes", ["--config.model.num_classes=5"], "config.model.num_classes"),
  ("too many devices", ["--config.num_devices=9"], "config.num_devices"),
  ("bad nonlinearity", ["--config.model.nonlinearity=swish"], "config.model.nonlinearity"),
  ("decay out of range", ["--config.bn.decay=1.0"], "config.bn.decay"),
  ("epsilon 0", ["--config.bn.epsilon=0"], "config.bn.epsilon"),
  ("wrong type", ["--config.num_steps=many"], "num_steps"),
  ("unknown model", ["--config.model.name=resnet"], "config.model.name"),
  ("unknown dataset", ["--config.data.name=svhn"], "config.data.name"),
  ("unknown BN mode", ["--config.bn.population=median"], "config.bn.population"),
  ("unknown backend", ["--config.parallel=xmap"], "config.parallel"),
  ("negative seed", ["--config.seed=-1"], "config.seed: must be in 0..2147483647"),
  ("seed past int32", ["--config.seed=2147483648"], "config.seed: must be in 0..2147483647"),
  (
    "cache directory under a file",
    ["--config.compilation_cache=/dev/null/cache"],
    "config.compilation_cache: cannot create",
  ),
  ("unknown source", ["--config.data.source=web"], "config.data.source"),
  ("bad split", ["--config.data.eval_split=test[a:b]"], "config.data.eval_split"),
  (
    "overlapping splits",
    ["--config.data.train_split=train[:50]", "--config.data.eval_split=train[40:]"],
    "config.data.eval_split",
  ),
  (
    "tfds offline",
    ["--config.data.source=tfds", "--config.data.tfds_data_dir={tmp}/tfds"],
    "config.data.idx_dir",
  ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,flags,expect", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, tiny_idx, name, flags, expect):
  del name
  workdir = tmp_path / "run"
  flags = [f.format(tmp=tmp_path) for f in flags]
  r = cli(workdir, *tiny(tiny_idx, "--config.num_steps=4"), *flags)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert expect in lines[0] and "Traceback" not in r.stderr
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["missing", "wrong magic", "truncated"])
def test_bad_data_directory(tmp_path, setup):
  d = tmp_path / "data"
  if setup != "missing":
    d.mkdir()
    write_pair(d, "train", 20, seed=0, gz=False)
    write_pair(d, "t10k", 10, seed=0, gz=False)
    images = d / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    images.write_bytes(
      b"\x00\x00\x08\x02" + raw[4:] if setup == "wrong magic" else raw[: len(raw) // 2]
    )
  workdir = tmp_path / "run"
  r = cli(
    workdir, "--config.data.source=idx", f"--config.data.idx_dir={d}", "--config.batch_size=16"
  )
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert "config.data.idx_dir" in lines[0] or "IDX" in lines[0], r.stderr
  assert not workdir.exists()


@pytest.mark.parametrize(
  "config,expect",
  [
    ("mnist_mlp:bn_swish", "--config=mnist_mlp:bn_swish: ValueError: unknown variant"),
    ("configs/inception_small.py:nonsense", "unknown variant, dataset or preset 'nonsense'"),
    ("configs/no_such_file.py", "there is no file"),
    ("no_such_config:bn", "the packaged configs are mnist_mlp, seq_mnist"),
    ("{tmp}/broken.py", "SyntaxError"),
  ],
)
def test_bad_config_file_or_variant(tmp_path, config, expect):
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  r = cli(tmp_path / "run", config=config.format(tmp=tmp_path))
  assert r.returncode == 2
  assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_decay_below_half_warns_pytorch_convention(tmp_path, tiny_idx):
  r = cli(tmp_path / "run", *tiny(tiny_idx, "--config.num_steps=4", "--config.bn.decay=0.1"))
  assert r.returncode == 0, r.stderr
  assert "PyTorch's momentum=0.1 corresponds to decay=0.9" in r.stderr


@pytest.mark.slow
def test_profile_window_writes_a_trace(tmp_path, tiny_idx):
  workdir = tmp_path / "run"
  r = cli(
    workdir,
    *tiny(
      tiny_idx,
      "--config.num_steps=12",
      "--config.profile_start_step=4",
      "--config.profile_num_steps=4",
    ),
  )
  assert r.returncode == 0, r.stderr
  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0


def test_console_script_loads_packaged_configs_that_import_siblings_from_any_directory(tmp_path):
  """inception_small.py imports bn_repro.configs.inception_imagenet: the installed `bn-repro`
  (no `python -m`, so no repo root on sys.path) run from elsewhere finds the packaged file by
  name and imports it; an unknown variant then fails in get_config itself, before anything
  is written."""
  script = os.path.join(os.path.dirname(sys.executable), "bn-repro")
  r = subprocess.run(
    [script, "--config=inception_small:nonsense", f"--workdir={tmp_path}/w"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 2
  assert "unknown variant, dataset or preset 'nonsense'" in r.stderr, r.stderr
  assert "ModuleNotFound" not in r.stderr, r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_sweep_console_script_loads_sweep_files_that_import_configs(tmp_path):
  """`bn-repro-sweep --sweep=inception_sweeps:small_five`: the packaged sweep file imports
  bn_repro.configs.inception_imagenet; the installed script must find both from anywhere."""
  script = os.path.join(os.path.dirname(sys.executable), "bn-repro-sweep")
  r = subprocess.run(
    [
      script,
      "--sweep=inception_sweeps:small_five",
      f"--workdir={tmp_path}/w",
      "--print_commands",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("--point=config=inception_small_") == 5, r.stdout


@pytest.mark.parametrize(
  "command,program",
  [
    (["-m", "bn_repro.main", "--config=mnist_mlp:bn_sigmoid"], "bn-repro"),
    (["-m", "bn_repro.sweeps"], "bn-repro sweep"),
    (["scripts/sweep_report.py"], "sweep_report"),
    (["scripts/ablation_report.py"], "ablation_report"),
    (["scripts/figure1.py"], "figure1"),
  ],
  ids=lambda v: v if isinstance(v, str) else None,
)
@pytest.mark.slow
def test_every_cli_reports_an_unknown_flag_in_one_line(tmp_path, command, program):
  r = subprocess.run(
    [sys.executable, *command, "--no_such_flag=1", f"--workdir={tmp_path}/w"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), r.stderr
  assert "no_such_flag" in lines[0]
  assert not (tmp_path / "w").exists()


MESSAGES = [
  (
    ["--config.optimizer.learning_rat=0.1"],
    "unknown config field 'optimizer.learning_rat' in --config.optimizer.learning_rat; "
    "did you mean --config.optimizer.learning_rate?",
  ),
  (["--config.tensorboard=maybe"], "'maybe' is not a boolean; use True or False"),
  (
    ["--num_steps=100"],
    "unknown flag --num_steps; config fields are set as --config.<field>, "
    "here --config.num_steps=100",
  ),
  (["--workdr=x"], "unknown flag --workdr; did you mean --workdir?"),
  (["--config.optimizer.learning_rate=1e400"], "must be a finite number, got inf"),
  (
    ["--config=mnist_sweeps:lr_grid"],
    "mnist_sweeps is a sweep file, not a config; run it with "
    "bn-repro-sweep --sweep=mnist_sweeps:NAME",
  ),
  (["--workdir={tmp}/afile"], "afile is a file, not a directory"),
]


@pytest.mark.parametrize("flags,expect", MESSAGES, ids=[m[0][0].split("=")[0] for m in MESSAGES])
def test_mistakes_are_one_clean_line(tmp_path, flags, expect):
  (tmp_path / "afile").write_text("")
  flags = [f.format(tmp=tmp_path) for f in flags]
  config = next((f.split("=", 1)[1] for f in flags if f.startswith("--config=")), "mnist_mlp")
  workdir = next((f.split("=", 1)[1] for f in flags if f.startswith("--workdir=")), tmp_path / "w")
  rest = [f for f in flags if not f.startswith(("--config=", "--workdir="))]
  r = cli(workdir, *rest, config=config)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bn-repro: error: ") and expect in lines[0], lines
  assert "\\" not in lines[0] and "('" not in lines[0] and not (tmp_path / "w").exists()


def test_a_config_passed_as_sweep_is_named(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "bn_repro.sweeps",
      "--sweep=mnist_mlp:bn_sigmoid",
      f"--workdir={tmp_path}/w",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 2
  assert "mnist_mlp is a config, not a sweep file; train it with bn-repro" in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


SWEEP_MESSAGES = [
  (
    "--num_steps=100",
    "unknown flag --num_steps; a sweep sets config fields with --override=FIELD=VALUE, "
    "here --override=num_steps=100",
  ),
  ("--config.num_steps=100", "here --override=num_steps=100"),
  ("--learning_rat=0.1", "here --override=optimizer.learning_rate=0.1"),
  ("--paralel=2", "unknown flag --paralel; did you mean --parallel?"),
]


@pytest.mark.parametrize(
  "flag,expect", SWEEP_MESSAGES, ids=[m[0].split("=")[0] for m in SWEEP_MESSAGES]
)
def test_a_sweep_names_the_override_a_config_flag_should_be(tmp_path, flag, expect):
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "bn_repro.sweeps",
      "--sweep=mnist_sweeps:lr_grid",
      f"--workdir={tmp_path}/w",
      flag,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bn-repro sweep: error: ") and expect in lines[0]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "script,flags",
  [
    ("bn-repro", ("--workdir", "--config", "--fallback_checkpoint")),
    ("bn-repro-sweep", ("--sweep", "--parallel", "--batched")),
  ],
)
def test_help_of_each_console_script_lists_its_own_flags(script, flags):
  r = subprocess.run(
    [os.path.join(os.path.dirname(sys.executable), script), "--help"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr
  for flag in flags:
    assert f"  {flag}" in r.stdout or f"  --[no]{flag[2:]}" in r.stdout, (flag, r.stdout)
