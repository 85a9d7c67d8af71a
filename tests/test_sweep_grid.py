"""The grid language of sweep files (bn_repro.sweeps.grid): combinations and point names.

No JAX: these run in a second."""

import subprocess
import sys

import pytest

from bn_repro.sweeps import grid as sw


def test_product_zip_concat():
  lr = sw.axis("optimizer.learning_rate", (0.1, 1.0))
  bn = sw.axis("model.use_bn", (True, False))
  assert sw.product(bn, lr) == [
    {"model.use_bn": True, "optimizer.learning_rate": 0.1},
    {"model.use_bn": True, "optimizer.learning_rate": 1.0},
    {"model.use_bn": False, "optimizer.learning_rate": 0.1},
    {"model.use_bn": False, "optimizer.learning_rate": 1.0},
  ]
  assert sw.zip_(bn, lr) == [
    {"model.use_bn": True, "optimizer.learning_rate": 0.1},
    {"model.use_bn": False, "optimizer.learning_rate": 1.0},
  ]
  assert sw.concat(bn, [{"seed": 3}]) == bn + [{"seed": 3}]
  assert len(sw.product(bn, lr, sw.axis("seed", range(3)))) == 12
  with pytest.raises(ValueError, match="equal length"):
    sw.zip_(bn, sw.axis("seed", range(3)))
  with pytest.raises(ValueError, match="model.use_bn"):
    sw.product(bn, bn)


def test_point_names_are_stable_sorted_and_filesystem_safe():
  aliases = {"model.use_bn": "bn", "optimizer.learning_rate": "lr"}
  a = {
    "model.use_bn": True,
    "model.nonlinearity": "sigmoid",
    "optimizer.learning_rate": 0.1,
    "seed": 0,
  }
  b = dict(reversed(list(a.items())))
  assert (
    sw.point_name(a, aliases)
    == sw.point_name(b, aliases)
    == ("bn=on,lr=0.1,nonlinearity=sigmoid,seed=0")
  )
  assert sw.point_name({"optimizer.learning_rate": 10.0}, aliases) == "lr=10"
  assert sw.point_name({"optimizer.learning_rate": 1e-5}, aliases) == "lr=1e-05"
  assert sw.point_name({"model.hidden": (8, 8)}) == "hidden=8x8"
  assert sw.point_name({"data.train_split": "test[:8000]"}) == "train_split=test__8000_"
  assert sw.point_name({"config": "bn_x5"}) == "config=bn_x5"
  assert sw.point_name({"config": "../inception.py:bn_x5"}) == "config=inception_bn_x5"
  assert sw.point_name({}) == "base"
  long = sw.point_name({f"f{i}": "v" * 20 for i in range(20)})
  assert len(long) <= sw.MAX_NAME and long == sw.point_name({f"f{i}": "v" * 20 for i in range(20)})
  for name in (sw.point_name(a, aliases), long):
    assert "/" not in name and " " not in name


def test_grid_imports_the_standard_library_only():
  code = (
    "import sys; import bn_repro.sweeps.grid; "
    "print(sorted(m for m in ('jax', 'absl', 'ml_collections', 'numpy') if m in sys.modules))"
  )
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_pick_names_the_choices():
  sweeps = {"a": lambda: sw.Sweep(base="x.py:y", grid=sw.axis("seed", (0,)))}
  assert sw.pick(sweeps, "a", "here.py").grid == [{"seed": 0}]
  with pytest.raises(ValueError, match="unknown sweep 'b' in here.py; choose one of a"):
    sw.pick(sweeps, "b", "here.py")
