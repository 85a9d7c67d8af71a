"""The packaged configs: JAX-free loading, presets, spec resolution, and the CLI by name."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
from idx_files import write_pair

from bn_repro import configs
from bn_repro.configs import common, inception_imagenet, inception_small, mnist_mlp, seq_mnist
from bn_repro.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
T10K_FIELDS = dict(source="idx", train_split="test[:8000]", eval_split="test[8000:]")

# Every variant of every config file, each also with a data preset where it applies.
VARIANTS = (
  [f"mnist_mlp:{v}" for v in mnist_mlp.VARIANTS]
  + [f"seq_mnist:{b},{s}" for b in ("bn", "nobn") for s in seq_mnist.SEQUENCES]
  + [f"inception_imagenet:{v}" for v in inception_imagenet.VARIANTS]
  + [
    f"inception_small:{v},{d}"
    for v in inception_imagenet.VARIANTS
    for d in inception_small.DATASETS
  ]
)
SPECS = (
  [name for name in configs.CONFIGS]
  + VARIANTS
  + [f"{s},tfds" for s in VARIANTS]
  + [f"{s},t10k" for s in VARIANTS if "imagenet" not in s and "cifar10" not in s]
)


def _fields(c) -> dict:
  """Dotted field -> (type, value) of a config."""
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = (type(v), v)

  walk(c.to_dict(), "")
  return out


def test_loading_every_config_and_variant_imports_no_jax():
  """In a fresh process: configs.get on every spec, then neither jax nor flax is imported."""
  script = (
    "import json, sys\n"
    "from bn_repro import configs\n"
    "for spec in json.loads(sys.argv[1]):\n"
    "  configs.get(spec)\n"
    "print(json.dumps([m for m in ('jax', 'flax', 'jaxlib') if m in sys.modules]))\n"
  )
  r = subprocess.run(
    [sys.executable, "-c", script, json.dumps(SPECS)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ),
  )
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout) == [], "loading configs imported " + r.stdout


def test_bn_variant_defaults_are_the_batchnorm_modules():
  """common.BN_VARIANTS and the base's BN fields are bn_repro.BatchNorm's defaults."""
  import bn_repro
  from bn_repro import models

  module = {f.name: f.default for f in dataclasses.fields(bn_repro.BatchNorm)}
  assert set(common.BN_VARIANTS) == set(models.BN_VARIANT_FIELDS)
  for name, value in common.BN_VARIANTS.items():
    assert type(value) is type(module[name]) and value == module[name], name
  assert models.bn_variant_defaults() == common.BN_VARIANTS
  bn = common.get_config().bn
  for name in ("epsilon", "decay", "population", "unbiased"):
    assert bn[name] == module[name], name
  assert {k: bn[k] for k in common.BN_VARIANTS} == common.BN_VARIANTS


def test_t10k_sets_the_four_data_fields_and_reads_the_environment(monkeypatch):
  monkeypatch.setenv(common.MNIST_DIR_ENV, "/data/mnist")
  for spec in ("mnist_mlp:bn_relu", "seq_mnist:nobn,pixels", "inception_small:bn_x30,mnist"):
    plain, t10k = _fields(configs.get(spec)), _fields(configs.get(spec + ",t10k"))
    changed = {k: v for k, v in t10k.items() if plain[k] != v}
    assert set(t10k) == set(plain)
    assert changed == {
      f"data.{k}": (str, v) for k, v in dict(T10K_FIELDS, idx_dir="/data/mnist").items()
    }, spec
    assert _fields(configs.get(spec + ",tfds")) == plain  # the configs' default source

  monkeypatch.delenv(common.MNIST_DIR_ENV)
  assert configs.get("mnist_mlp:t10k").data.idx_dir == ""


def test_choices_compose_in_any_order(monkeypatch):
  monkeypatch.setenv(common.MNIST_DIR_ENV, "/data/mnist")
  assert _fields(configs.get("seq_mnist:bn,pixels,t10k")) == _fields(
    configs.get("seq_mnist:t10k,pixels,bn")
  )
  assert _fields(configs.get("mnist_mlp:t10k")) == _fields(configs.get("mnist_mlp:bn_sigmoid,t10k"))
  c = configs.get("inception_small:t10k,bn_x30")
  assert (c.optimizer.learning_rate, c.data.name, c.data.source) == (0.3, "mnist", "idx")
  assert inception_small.get_config("bn_x5,cifar10").data.name == "cifar10"


@pytest.mark.parametrize(
  "spec,match",
  [
    (
      "mnist_mlp:bn_sigmoid,t10x",
      r"unknown variant or preset 't10x' in 'bn_sigmoid,t10x' of mnist_mlp.py; choose from "
      r"variant: bn_sigmoid, .*, nobn_tanh; preset: tfds, t10k$",
    ),
    ("seq_mnist:bn,rows,nobn", r"names two of variant, 'bn' and 'nobn'"),
    ("mnist_mlp:tfds,t10k", r"names two of preset, 'tfds' and 't10k'; choose one of tfds, t10k"),
    ("inception_small:bn_x5,cifar10,t10k", r"t10k reads MNIST's IDX files.*cifar10"),
    ("inception_imagenet:bn_x5,t10k", r"t10k reads MNIST's IDX files.*imagenet2012"),
  ],
)
def test_bad_choice_is_one_clear_value_error(monkeypatch, spec, match):
  monkeypatch.delenv(common.MNIST_DIR_ENV, raising=False)
  with pytest.raises(ValueError, match=match) as e:
    configs.get(spec)
  assert "\n" not in str(e.value)


def test_spec_resolves_a_path_or_a_packaged_name(tmp_path, monkeypatch):
  packaged = os.path.join(configs.DIR, "mnist_mlp.py")
  monkeypatch.chdir(tmp_path)
  for file in (
    "mnist_mlp",
    "mnist_mlp.py",
    "configs/mnist_mlp.py",
    "bn_repro/configs/mnist_mlp.py",
  ):
    assert configs.resolve_path(f"{file}:bn_relu,t10k") == f"{packaged}:bn_relu,t10k", file
  assert configs.resolve_path("mnist_sweeps:lr_grid", kind="sweep") == (
    os.path.join(configs.DIR, "mnist_sweeps.py") + ":lr_grid"
  )
  (tmp_path / "mnist_mlp.py").write_text("def get_config(arg='x'):\n  return {'arg': arg}\n")
  assert configs.resolve_path("mnist_mlp.py:a") == "mnist_mlp.py:a"  # a file wins
  assert configs.get("mnist_mlp.py:a") == {"arg": "a"}
  assert configs.get("mnist_mlp.py") == {"arg": "x"}  # no ':': get_config()

  with pytest.raises(UserError, match=r"no file 'nope', nor a packaged config .*are mnist_mlp, "):
    configs.get("nope:bn")
  with pytest.raises(UserError, match=r"the packaged sweeps are mnist_sweeps, ablation_sweeps"):
    configs.resolve_path("mnist_mlp:x", kind="sweep")
  with pytest.raises(UserError, match="there is no file 'elsewhere/mnist_mlp.py'"):
    configs.resolve_path("elsewhere/mnist_mlp.py:bn_relu")  # only configs/ maps to the package


def test_sweep_presets_reach_every_point():
  from bn_repro.configs import inception_sweeps, mnist_sweeps

  sweep = mnist_sweeps.get_sweep("figure1,t10k")
  assert sweep.base == "mnist_mlp.py:bn_sigmoid,t10k"
  assert sweep.grid == mnist_sweeps.get_sweep("figure1").grid
  five = inception_sweeps.get_sweep("t10k,small_five")
  assert five.base == "inception_small.py:inception,t10k"
  assert [p["config"] for p in five.grid] == [
    f"inception_small.py:{v},t10k" for v in inception_imagenet.VARIANTS
  ]
  with pytest.raises(ValueError, match=r"names no sweep; choose one of sweep: lr_grid"):
    mnist_sweeps.get_sweep("t10k")
  with pytest.raises(ValueError, match=r"unknown sweep or preset 'lr'"):
    mnist_sweeps.get_sweep("lr")


def _main(workdir, cwd, env, *flags):
  return subprocess.run(
    [sys.executable, "-m", "bn_repro.main", f"--workdir={workdir}", *flags],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )


@pytest.mark.slow
def test_cli_runs_a_packaged_config_by_name_with_the_t10k_preset(tmp_path):
  """`python -m bn_repro.main --config=mnist_mlp:bn_sigmoid,t10k` from outside the repository,
  BN_REPRO_MNIST_DIR pointing at generated t10k files (8,040 images: 8,000 train, 40 eval)."""
  idx = tmp_path / "idx"
  idx.mkdir()
  write_pair(idx, "t10k", 8_040, seed=2, gz=False)
  env = dict(os.environ, **{common.MNIST_DIR_ENV: str(idx)})
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  workdir = tmp_path / "run"
  tiny = [
    "--config.model.hidden=(8, 8)",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    "--config.num_steps=4",
    "--config.log_every=4",
    "--config.eval_every=4",
    "--config.checkpoint_every=4",
    "--config.tensorboard=False",
  ]
  r = _main(workdir, tmp_path, env, "--config=mnist_mlp:bn_sigmoid,t10k", *tiny)
  assert r.returncode == 0, r.stderr
  assert json.loads((workdir / "status.json").read_text())["status"] == "done"
  data = json.loads((workdir / "config.json").read_text())["data"]
  assert {k: data[k] for k in (*T10K_FIELDS, "idx_dir")} == dict(T10K_FIELDS, idx_dir=str(idx))

  del env[common.MNIST_DIR_ENV]
  r = _main(tmp_path / "unset", tmp_path, env, "--config=mnist_mlp.py:bn_sigmoid,t10k", *tiny)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert "config.data.idx_dir: is empty" in lines[0], lines[0]
  assert common.MNIST_DIR_ENV in lines[0] and "--config.data.idx_dir=DIR" in lines[0], lines[0]
  assert not (tmp_path / "unset").exists()
