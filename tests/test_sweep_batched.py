"""The sweep runner's --batched: which points share one program, and a tiny sweep trained as
one batched group against the same sweep trained point by point."""

import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from idx_files import write_mnist_dir
from test_batched import untimed
from test_sweep import BASE, REPO, TINY, _run, _runner, _sweep_file

from bn_repro.rundir import RunDir
from bn_repro.sweeps import grid as sw
from bn_repro.sweeps import resolve, runner


def test_points_that_differ_only_in_seed_and_learning_rate_share_a_group(tmp_path):
  grid = sw.concat(
    sw.product(
      sw.axis("model.use_bn", (True, False)),
      sw.axis("optimizer.learning_rate", (0.1, 1.0)),
      sw.axis("seed", (0, 1)),
    ),
    [
      {"model.use_bn": True, "seed": 5, "model.hidden": (4,)},  # another shape
      {"model.use_bn": True, "seed": 6, "bn.population": "average"},
    ],
  )  # training.check_batchable refuses it
  sweep = sw.Sweep(
    base=BASE,
    grid=grid,
    fixed=TINY,
    aliases={"model.use_bn": "bn", "optimizer.learning_rate": "lr"},
  )
  points = resolve.resolve(sweep, str(REPO), str(tmp_path), {}, cwd=str(REPO))
  everything = range(len(points))
  assert runner.batch_groups(points, everything) == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9]]
  assert runner.batch_groups(points, everything, max_runs=3) == [
    [0, 1],
    [2, 3],
    [4, 5],
    [6, 7],
    [8],
    [9],
  ]
  assert runner.batch_groups(points, [0, 5, 2]) == [[0, 2], [5]]
  # Fewer groups than processes: the largest split evenly, 2 runs a part at least.
  assert runner.batch_groups(points, range(8), parallel=4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert runner.batch_groups(points, [0, 1, 2, 3, 4, 5], parallel=3) == [[0, 1], [2, 3], [4, 5]]
  assert runner.batch_groups(points, [0, 1, 2, 4, 5, 6, 7], parallel=3) == [
    [0, 1, 2],
    [4, 5],
    [6, 7],
  ]
  assert runner.batch_groups(points, [0, 1, 2, 4], parallel=4) == [[0, 1, 2], [4]]
  assert runner.batch_groups(points, everything, parallel=2) == runner.batch_groups(
    points, everything
  )
  # A point that resumes from another step than its partners trains apart.
  (tmp_path / points[1].name / "checkpoints" / "4").mkdir(parents=True)
  assert runner.batch_groups(points, everything)[:3] == [[0, 2, 3], [1], [4, 5, 6, 7]]


def _files(point_dir: pathlib.Path) -> list[str]:
  """Every path below a point's dir; OCDBT's data files (`d/<random name>`) as `d/*`."""
  paths = set()
  for p in point_dir.rglob("*"):
    rel = p.relative_to(point_dir)
    paths.add(str(rel.parent / "*") if rel.parent.name == "d" else str(rel))
  return sorted(paths)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
  """Seeds {0, 1} x lr {0.1, 1e9} (1e9 diverges at step 2), 8 steps: point by point, and
  batched (one group); then the batched sweep again, which finds nothing to do."""
  tmp = tmp_path_factory.mktemp("sweep_batched")
  idx = tmp / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  spec = _sweep_file(
    tmp / "seeds_lrs.py",
    'sw.product(sw.axis("seed", (0, 1)), sw.axis("optimizer.learning_rate", (0.1, 1e9)))',
  )
  data = ["--override=data.source=idx", f"--override=data.idx_dir={idx}"]
  single, batched = tmp / "single", tmp / "batched"
  args = [f"--sweep={spec}:x", f"--workdir={batched}", *data, "--batched"]
  return dict(
    single=single,
    batched=batched,
    args=args,
    names=["lr=0.1,seed=0", "lr=1e+09,seed=0", "lr=0.1,seed=1", "lr=1e+09,seed=1"],
    reference=_run(_runner(f"--sweep={spec}:x", f"--workdir={single}", *data, "--parallel=2")),
    runs=[_run(_runner(*args)), _run(_runner(*args))],
  )


@pytest.mark.slow
def test_batched_sweep_writes_what_the_points_write_alone(both):
  reference, (batched, again) = both["reference"], both["runs"]
  for r in (reference, batched, again):
    assert r.returncode == 0, r.stdout + r.stderr
  assert "2 done, 2 diverged, 0 failed" in reference.stdout, reference.stdout
  assert batched.stdout.count("started (batched, 4 points)") == 4, batched.stdout
  assert "lr=1e+09,seed=0: diverged at step 2" in batched.stdout, batched.stdout
  assert "lr=0.1,seed=1: done at step 8" in batched.stdout, batched.stdout
  assert again.stdout.count(": skipped (") == 4 and "started" not in again.stdout, again.stdout
  for name in both["names"]:
    single, batched = both["single"] / name, both["batched"] / name
    assert _files(batched) == _files(single), name
    for f in ("status.json", "config.json"):
      assert json.loads((single / f).read_text()) == json.loads((batched / f).read_text())
    want, got = (untimed(RunDir(d).metrics()) for d in (single, batched))
    assert [sorted(e) for e in got] == [sorted(e) for e in want], name
    for w, g in zip(want, got):
      for k, v in w.items():
        assert g[k] == pytest.approx(v, rel=1e-5), (name, w["step"], k)
    if "lr=0.1" in name:
      assert [e["step"] for e in want] == [0, 4, 8]
      restored = [
        ocp.StandardCheckpointer().restore(d / "checkpoints/8/default") for d in (single, batched)
      ]
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), *restored)
  assert "lr=0.1,seed=0/log.txt" in (both["batched"] / "lr=0.1,seed=1/log.txt").read_text()
  record = json.loads((both["batched"] / "sweep.json").read_text())
  assert record["runner_command"].endswith(" --batched")


@pytest.mark.slow
def test_print_commands_prints_one_command_per_group(both, tmp_path):
  args = [a.replace(str(both["batched"]), str(tmp_path / "fresh")) for a in both["args"]]
  r = _run(_runner(*args, "--max_batched_runs=2", "--print_commands"))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  names = both["names"]
  assert len(lines) == 2, lines
  for line, group in zip(lines, (names[:2], names[2:])):
    assert line.startswith(f"cd {REPO} && ") and " --batched --max_batched_runs=2 " in line
    assert line.endswith(f" --point={group[0]} --point={group[1]}"), line
  r = _run(_runner(*args, "--cpu_devices=3", "--print_commands"))
  assert r.returncode == 0 and " --batched --cpu_devices=3 " in r.stdout, r.stderr
  for bad, says in (
    ("--max_batched_runs=2", "add --batched"),
    ("--cpu_devices=2", "add --batched"),
  ):
    r = _run(_runner(*args[:-1], bad))
    assert r.returncode == 2 and says in r.stderr, r.stderr
  r = _run(_runner(*args, "--cpu_devices=-1"))
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
    "bn-repro sweep: error: --cpu_devices: must be >= 0 (0: one per usable CPU)"
  ], r.stderr
  assert not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_batched_group_on_a_cpu_host_spreads_over_one_device_per_core(tmp_path):
  """The user's path on a CPU host (no XLA_FLAGS device count): the group's child makes
  --cpu_devices=2 CPU devices and trains 2 of the 4 points on each; every point's metrics
  (but the timing) and final checkpoint equal the point run alone, bit for bit."""
  idx = tmp_path / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  spec = _sweep_file(
    tmp_path / "seeds_lrs.py",
    'sw.product(sw.axis("seed", (0, 1)), sw.axis("optimizer.learning_rate", (0.1, 0.5)))',
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  data = ["--override=data.source=idx", f"--override=data.idx_dir={idx}"]
  single, batched = tmp_path / "single", tmp_path / "batched"
  for workdir, how in ((single, []), (batched, ["--batched", "--cpu_devices=2"])):
    r = _run(_runner(f"--sweep={spec}:x", f"--workdir={workdir}", *data, *how), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
  names = ["lr=0.1,seed=0", "lr=0.5,seed=0", "lr=0.1,seed=1", "lr=0.5,seed=1"]
  assert "4 batched runs on 2 row(s) of 1 device(s)" in (batched / names[0] / "log.txt").read_text()
  for name in names:
    want, got = (untimed(RunDir(d / name).metrics()) for d in (single, batched))
    assert got == want, name
    restored = [
      ocp.StandardCheckpointer().restore(d / name / "checkpoints/8/default")
      for d in (single, batched)
    ]
    jax.tree.map(np.testing.assert_array_equal, *restored)
