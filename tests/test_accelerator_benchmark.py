"""The accelerator benchmark (bn_repro/benchmark/accelerator.py): its FLOP count, its model
fields, and a tiny run on CPU with ml_collections, tensorflow_datasets and tensorboardX blocked."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bn_repro import configs
from bn_repro.benchmark import accelerator

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("ml_collections", "tensorflow_datasets", "tensorboardX")


def test_flops_of_a_matrix_product_a_convolution_and_a_scan():
  x, w = jnp.ones((3, 5)), jnp.ones((5, 7))
  assert accelerator.count_flops(jnp.dot, x, w) == 2 * 3 * 5 * 7
  img, k = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 8))  # NHWC, HWIO, stride 2, SAME
  conv = lambda a, b: jax.lax.conv_general_dilated(
    a, b, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  assert accelerator.count_flops(conv, img, k) == 2 * (2 * 3 * 3 * 8) * (3 * 3 * 4)
  grouped = lambda a, b: jax.lax.conv_general_dilated(
    a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4
  )
  assert accelerator.count_flops(grouped, img, jnp.ones((3, 3, 1, 8))) == 2 * (2 * 4 * 4 * 8) * 9
  scan = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4)[0]
  assert accelerator.count_flops(scan, jnp.ones((3, 5)), jnp.ones((5, 5))) == 4 * 2 * 3 * 5 * 5


def test_model_fields_are_the_configs():
  c = configs.get("inception_imagenet:bn_x5")
  for name, value in accelerator.INCEPTION_MODEL.items():
    assert c.model[name] == value, name
  for name, value in accelerator.INCEPTION_BN.items():
    assert c.bn[name] == value, name
  m = configs.get("mnist_mlp:bn_sigmoid")
  for name, value in accelerator.MLP_MODEL.items():
    assert m.model[name] == value, name
  for name, value in accelerator.MLP_BN.items():
    assert m.bn[name] == value, name


@pytest.mark.parametrize(
  "kind,dtype,want",
  [
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),
    ("TPU v5 lite", "float32", 197.0),
    ("cpu", "float32", None),
  ],
)
def test_peak_per_device_kind(kind, dtype, want):
  assert accelerator.peak_tflops(kind, dtype) == want


PRELUDE = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""
BLOCKER = (
  PRELUDE
  + """
sys.argv = ["accelerator_benchmark.py"] + sys.argv[1:]
runpy.run_path("scripts/accelerator_benchmark.py", run_name="__main__")
"""
)


def test_the_blocker_blocks():
  r = subprocess.run(
    [sys.executable, "-c", PRELUDE + "import bn_repro.configs"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0 and "blocked: ml_collections" in r.stderr


@pytest.mark.slow
def test_tiny_benchmark_runs_without_the_missing_packages(tmp_path):
  out = tmp_path / "rows.json"
  r = subprocess.run(
    [sys.executable, "-c", BLOCKER, "--tiny", f"--json={out}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr
  rows = json.loads(out.read_text())
  assert [(r["benchmark"], r.get("dtype")) for r in rows] == [
    ("bn_inception", "float32"),
    ("bn_inception", "bfloat16"),
    ("mnist_mlp", None),
  ]
  for row in rows[:2]:
    assert row["images_per_sec"] > 0 and row["step_ms"] > 0 and row["mfu"] is None  # CPU
    assert row["model_gflops_per_device_step"] > 0
  assert rows[2]["steps_per_sec"] > 0
  assert "| BN-Inception 32x32, 4/device (cpu) | bfloat16 |" in r.stdout
