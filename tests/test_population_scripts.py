"""Precise BN and AdaBN (bn_repro.report.population and its CLIs, scripts/precise_bn.py and
scripts/adabn.py) on a tiny trained run: Algorithm 2 against NumPy, the scripts' outputs,
domain shifts, and that the source run is never written."""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from idx_files import write_mnist_dir
from matplotlib.figure import Figure

from bn_repro import data, parallel, runs, training
from bn_repro.configs import mnist_mlp
from bn_repro.errors import UserError
from bn_repro.report import population

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = 16
HIDDEN = (16, 16)


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
  """scripts/<name>.py in a subprocess (the test's XLA_FLAGS: 8 CPU devices)."""
  return subprocess.run(
    [sys.executable, f"scripts/{name}.py", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )


def tree_hashes(root: pathlib.Path) -> dict[str, str]:
  """Every path under `root`: a file's SHA-256, or "dir"."""
  return {
    str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    for p in sorted(root.rglob("*"))
  }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  """A BN sigmoid MLP trained 8 steps on 8 devices, checkpoints at steps 4 and 8."""
  root = tmp_path_factory.mktemp("population")
  c = mnist_mlp.get_config("bn_sigmoid")
  c.model.hidden = HIDDEN
  c.batch_size, c.eval_batch_size, c.num_steps = BATCH, 40, 8
  c.log_every, c.eval_every, c.checkpoint_every, c.tensorboard = 4, 8, 4, False
  c.data.source, c.data.idx_dir = "idx", str(write_mnist_dir(root, train=96, test=40))
  training.train_and_evaluate(c, str(root / "run"))
  return root / "run"


@pytest.fixture(scope="module")
def opened(run_dir) -> runs.Run:
  return runs.open_run(str(run_dir))


def numpy_population(run: runs.Run, num_batches: int, unbiased: bool) -> dict:
  """Algorithm 2 by hand: each BN layer's batch mean and variance over the first
  `num_batches` batches of the population stream, averaged; the forward in float64."""
  host = parallel.unreplicate(run.state)
  p, eps = host.params, run.config.bn.epsilon
  idx = data.train_batch_indices(
    len(run.train_ds), BATCH, run.config.seed + training.POPULATION_SEED_OFFSET, 0, num_batches
  )
  means, variances = [[] for _ in HIDDEN], [[] for _ in HIDDEN]
  for batch in idx:
    h = run.train_ds.images[batch].reshape(BATCH, -1).astype(np.float64) / 255
    for i in range(len(HIDDEN)):
      z = h @ np.asarray(p[f"dense{i}"]["kernel"], np.float64)
      mean, var = z.mean(0), z.var(0)
      means[i].append(mean)
      variances[i].append(var * BATCH / (BATCH - 1) if unbiased else var)
      y = (z - mean) / np.sqrt(var + eps) * p[f"bn{i}"]["scale"] + p[f"bn{i}"]["bias"]
      h = 1 / (1 + np.exp(-y))
  return {
    f"bn{i}": {"mean": np.mean(means[i], 0), "var": np.mean(variances[i], 0)}
    for i in range(len(HIDDEN))
  }


def assert_statistics(batch_stats, want, num_batches):
  for layer, stats in want.items():
    np.testing.assert_allclose(batch_stats[layer]["mean"], stats["mean"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batch_stats[layer]["var"], stats["var"], rtol=1e-4, atol=1e-7)
    assert int(batch_stats[layer]["count"]) == num_batches


def test_precise_statistics_are_the_mean_of_the_batch_moments(opened):
  state = opened.trainer.precise_population(opened.state, 3)
  host = parallel.unreplicate(state)
  assert_statistics(host.batch_stats, numpy_population(opened, 3, unbiased=False), 3)
  # The weights are frozen; the stored (EMA) statistics were something else.
  before = parallel.unreplicate(opened.state)
  np.testing.assert_array_equal(host.params["dense1"]["kernel"], before.params["dense1"]["kernel"])
  assert not np.allclose(host.batch_stats["bn0"]["var"], before.batch_stats["bn0"]["var"])


def test_unbiased_scales_the_variances_by_m_over_m_minus_1(run_dir, opened):
  unbiased = runs.open_run(str(run_dir), unbiased=True)
  got = parallel.unreplicate(unbiased.trainer.precise_population(unbiased.state, 3)).batch_stats
  biased = parallel.unreplicate(opened.trainer.precise_population(opened.state, 3)).batch_stats
  for layer in biased:
    np.testing.assert_allclose(got[layer]["mean"], biased[layer]["mean"], rtol=1e-6)
    np.testing.assert_allclose(
      got[layer]["var"], biased[layer]["var"] * BATCH / (BATCH - 1), rtol=1e-6
    )
  assert_statistics(got, numpy_population(opened, 3, unbiased=True), 3)


def test_open_run_restores_a_chosen_checkpoint(run_dir, opened):
  at4 = runs.open_run(str(run_dir), step=4)
  assert (opened.step, at4.step) == (8, 4)
  assert int(parallel.unreplicate(at4.state).step) == 4


def test_open_run_opens_a_run_without_bn_as_it_finished(tmp_path):
  """runs.open_run on a no-BN run: its config, metrics and restored state, whose evaluation
  is the run's last eval event; re-estimating statistics is refused in one line."""
  c = mnist_mlp.get_config("nobn_sigmoid")
  c.model.hidden = HIDDEN
  c.batch_size, c.eval_batch_size, c.num_steps = BATCH, 40, 4
  c.log_every, c.eval_every, c.checkpoint_every, c.tensorboard = 4, 4, 4, False
  c.data.source, c.data.idx_dir = "idx", str(write_mnist_dir(tmp_path, train=96, test=40))
  last = training.train_and_evaluate(c, str(tmp_path / "run"))
  run = runs.open_run(str(tmp_path / "run"))
  assert (
    run.step == 4 and not run.config.model.use_bn and not isinstance(run.trainer, runs.Estimator)
  )
  assert run.metrics()[-1]["eval/accuracy"] == last.metrics["eval/accuracy"]
  np.testing.assert_allclose(run.evaluate()["eval/loss"], last.metrics["eval/loss"], rtol=1e-6)
  with pytest.raises(UserError, match="trained without BN"):
    run.require_population()


@pytest.fixture(scope="module")
def scripts_ran(run_dir, tmp_path_factory):
  """Both scripts on the run: their outputs, and the run's file hashes before and after."""
  out = tmp_path_factory.mktemp("out")
  before = tree_hashes(run_dir)
  r = run_script("precise_bn", f"--workdir={run_dir}", "--batches=2,3", f"--out={out / 'precise'}")
  assert r.returncode == 0, r.stderr
  r = run_script(
    "adabn", f"--workdir={run_dir}", "--shifts=none,invert", "--batches=3", f"--out={out / 'adabn'}"
  )
  assert r.returncode == 0, r.stderr
  return out, before, tree_hashes(run_dir)


@pytest.mark.slow
def test_scripts_leave_the_source_run_byte_for_byte_unchanged(scripts_ran):
  _, before, after = scripts_ran
  assert before and after == before


def test_saved_run_holds_the_largest_n_statistics_and_the_source_weights(scripts_ran, opened):
  out = scripts_ran[0] / "precise"
  saved = runs.open_run(str(out / "run"))
  assert saved.step == opened.step
  assert saved.stored_statistics == "Algorithm 2 over 3 batches"
  host = parallel.unreplicate(saved.state)
  assert_statistics(host.batch_stats, numpy_population(opened, 3, unbiased=False), 3)
  source = parallel.unreplicate(opened.state)
  np.testing.assert_array_equal(host.params["dense0"]["kernel"], source.params["dense0"]["kernel"])
  rows = json.loads((out / "precise_bn.json").read_text())["rows"]
  assert [r["batches"] for r in rows] == [None, 2, 3]
  # Evaluating the saved run's statistics gives the table's N = 3 row.
  np.testing.assert_allclose(
    saved.trainer.evaluate(saved.state)["eval/loss"], rows[2]["eval/loss"], rtol=1e-6
  )


def test_adabn_with_no_shift_is_precise_bn(scripts_ran):
  out = scripts_ran[0]
  precise = json.loads((out / "precise" / "precise_bn.json").read_text())["rows"]
  adabn = {r["shift"]: r for r in json.loads((out / "adabn" / "adabn.json").read_text())["rows"]}
  none = adabn["none"]
  for key in ("eval/accuracy", "eval/loss"):
    assert none["before"][key] == none["clean"][key] == precise[0][key]  # stored statistics
    np.testing.assert_allclose(none["after"][key], precise[2][key], rtol=1e-6)
  # A real shift changes the before-accuracy's inputs; AdaBN then changes the statistics.
  assert adabn["invert"]["before"]["eval/loss"] != none["before"]["eval/loss"]
  assert adabn["invert"]["after"]["eval/loss"] != adabn["invert"]["before"]["eval/loss"]
  assert (out / "adabn" / "adabn.png").stat().st_size > 0


@pytest.mark.slow
def test_the_library_gives_the_scripts_numbers(scripts_ran, opened, tmp_path, monkeypatch):
  """population.precise_bn and population.adabn return the rows the scripts wrote; the
  tables and the figure are returned, nothing is written."""
  out = scripts_ran[0]
  monkeypatch.chdir(tmp_path)
  precise = population.precise_bn(opened, [2, 3])
  written = json.loads((out / "precise" / "precise_bn.json").read_text())
  assert [r["batches"] for r in precise.rows] == [r["batches"] for r in written["rows"]]
  for got, want in zip(precise.rows, written["rows"]):
    np.testing.assert_allclose(got["eval/loss"], want["eval/loss"], rtol=1e-6)
  assert precise.table().splitlines()[0] == "| " + " | ".join(population.PRECISE_HEADER) + " |"
  assert int(parallel.unreplicate(precise.state).batch_stats["bn0"]["count"]) == 3
  rows = population.adabn(opened, [data.parse_shift("invert")], 3)
  adabn = {r["shift"]: r for r in json.loads((out / "adabn" / "adabn.json").read_text())["rows"]}
  for key in ("clean", "before", "after"):
    np.testing.assert_allclose(
      rows[0][key]["eval/loss"], adabn["invert"][key]["eval/loss"], rtol=1e-6
    )
  assert isinstance(population.draw_adabn(rows, "title"), Figure)
  assert population.adabn_table(rows).count("\n") == 2
  assert not list(tmp_path.iterdir())


def test_shifts():
  x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  np.testing.assert_array_equal(data.parse_shift("invert")(x), 255 - x.astype(np.int32))
  np.testing.assert_array_equal(data.parse_shift("none")(x), x)
  np.testing.assert_array_equal(data.parse_shift("rotate:90")(x), np.rot90(x, axes=(1, 2)))
  noise = data.parse_shift("noise:0.1")
  np.testing.assert_array_equal(noise(x, 0), noise(x, 0))
  assert abs(np.std(noise(x, 0) / 255 - x / 255) - 0.1) < 0.02
  for bad in ("blur", "rotate", "rotate:x", "noise:2", "invert:1"):
    with pytest.raises(UserError, match="--shifts"):
      data.parse_shift(bad)


BAD_INPUT = [
  ("no config", lambda run, tmp: copy_without(run, tmp, "config.json"), "config.json"),
  ("no checkpoints", lambda run, tmp: copy_without(run, tmp, "checkpoints"), "checkpoints/"),
  ("corrupt checkpoint", lambda run, tmp: corrupt(run, tmp), "cannot be restored"),
]


def copy_without(run, tmp, name):
  shutil.copytree(run, tmp / "copy", ignore=shutil.ignore_patterns(name))
  return tmp / "copy"


def corrupt(run, tmp):
  copy = copy_without(run, tmp, "nothing")
  for f in (copy / "checkpoints" / "8").rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(f.read_bytes()[:20])
  return copy


@pytest.mark.slow
@pytest.mark.parametrize("make,expect", [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_bad_run_is_one_line_exit_2_nothing_written(run_dir, tmp_path, make, expect):
  workdir = make(run_dir, tmp_path)
  out = tmp_path / "out"
  r = run_script("precise_bn", f"--workdir={workdir}", "--batches=2", f"--out={out}")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], lines
  assert not out.exists()


@pytest.mark.parametrize(
  "argv,expect",
  [
    (["--shifts=blur"], "unknown shift 'blur'"),
    (["--step=5"], "no checkpoint at step 5"),
    (["--override=data.idx_dir=/nonexistent"], "config.data.idx_dir"),
    (["--override=model.widths=3"], "'model.widths' is not a field"),
    (["--out={run}/inside"], "never modified"),
  ],
)
@pytest.mark.slow
def test_bad_flags_are_one_line_exit_2(run_dir, tmp_path, argv, expect):
  argv = [a.format(run=run_dir) for a in argv]
  out = [] if any(a.startswith("--out") for a in argv) else [f"--out={tmp_path / 'out'}"]
  before = tree_hashes(run_dir)
  r = run_script("adabn", f"--workdir={run_dir}", *argv, *out)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], lines
  assert not (tmp_path / "out").exists() and tree_hashes(run_dir) == before


@pytest.mark.slow
def test_missing_workdir_from_the_command_line(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "scripts/precise_bn.py",
      f"--workdir={tmp_path / 'none'}",
      f"--out={tmp_path / 'out'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, r.stderr
  assert "does not exist" in lines[0] and "--workdir" in lines[0]
  assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
