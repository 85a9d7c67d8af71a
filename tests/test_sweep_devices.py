"""The sweep runner's placement of side-by-side jobs (bn_repro.sweeps.devices): disjoint
accelerators through the platform's visible-devices variable, disjoint CPU cores
through the affinity, checked from inside real child processes; and its progress line."""

import json
import os
import sys

from bn_repro.sweeps import devices, runner
from bn_repro.sweeps.progress import Progress
from bn_repro.sweeps.resolve import ResolvedPoint


def test_gpu_points_get_disjoint_devices_and_wait_for_free_ones():
  pool = devices.DevicePool("gpu", 8, parallel=8, cpus=[0, 1])
  slots = [pool.acquire(devices.wanted({"num_devices": 0}, pool.share)) for _ in range(8)]
  assert [s.env() for s in slots] == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(8)]
  assert all(s.cpus == () for s in slots)  # accelerator hosts keep every core
  assert pool.acquire(1) is None

  pool = devices.DevicePool("gpu", 8, parallel=2, cpus=[0])
  a, b = pool.acquire(4), pool.acquire(4)
  assert (a.devices, b.devices) == ((0, 1, 2, 3), (4, 5, 6, 7)) and pool.acquire(4) is None
  pool.release(a)
  assert pool.acquire(4).devices == (0, 1, 2, 3)

  pool = devices.DevicePool("gpu", 4, parallel=2, cpus=[0])
  big = pool.acquire(3)
  assert big.devices == (0, 1, 2) and pool.acquire(2) is None  # waits: 1 device free
  assert devices.DevicePool("gpu", 1, parallel=2).acquire(0).devices == (0,)  # shared
  given = devices.pool_from_probe(
    {"platform": "gpu", "device_count": 2}, 2, {"CUDA_VISIBLE_DEVICES": "4,6"}
  )
  assert [given.acquire(0).env(), given.acquire(0).env()] == [
    {"CUDA_VISIBLE_DEVICES": "4"},
    {"CUDA_VISIBLE_DEVICES": "6"},
  ]
  tpu = devices.DevicePool("tpu", 4, parallel=4).acquire(1)
  assert tpu.env()["TPU_VISIBLE_CHIPS"] == "0" and tpu.env()["TPU_PROCESS_BOUNDS"] == "1,1,1"


def test_cpu_jobs_side_by_side_get_disjoint_cores():
  pool = devices.DevicePool("cpu", 4, parallel=2, cpus=[0, 1, 2, 3])
  assert [pool.acquire(0).cpus, pool.acquire(0).cpus] == [(0, 1), (2, 3)]
  assert devices.DevicePool("cpu", 1, parallel=1, cpus=[0, 1]).acquire(0).cpus == ()
  three = devices.DevicePool("cpu", 1, parallel=3, cpus=[4, 5])
  assert [three.acquire(0).cpus for _ in range(3)] == [(4,), (5,), (4,)]


class _Probe(ResolvedPoint):
  """A point whose job writes what its process sees, then a done status."""

  def argv(self, python: str = sys.executable) -> list[str]:
    code = (
      "import json, os, sys; d = sys.argv[1]; "
      "seen = {'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), "
      "'cpus': sorted(os.sched_getaffinity(0))}; "
      "open(os.path.join(d, 'seen.json'), 'w').write(json.dumps(seen)); "
      "open(os.path.join(d, 'status.json'), 'w').write(json.dumps({'status': 'done', 'step': 1}))"
    )
    return [python, "-c", code, self.workdir]


def _points(tmp_path, n):
  return [
    _Probe(f"p{i}", {}, "x", {}, str(tmp_path / f"p{i}"), {"num_steps": 1, "num_devices": 0})
    for i in range(n)
  ]


def _sweep(tmp_path, monkeypatch, platform):
  monkeypatch.setattr(
    runner, "probe_environment", lambda env: {"platform": platform, "device_count": 4}
  )
  lines: list[str] = []
  points = _points(tmp_path, 4)
  rc = runner.Runner(points, 2, str(tmp_path), out=lines.append).run(range(4))
  seen = [json.loads((tmp_path / p.name / "seen.json").read_text()) for p in points]
  return rc, seen, lines


def test_children_see_their_own_gpus(tmp_path, monkeypatch):
  rc, seen, lines = _sweep(tmp_path, monkeypatch, "gpu")
  assert rc == 0
  assert sorted(s["cuda"] for s in seen) == ["0,1", "0,1", "2,3", "2,3"]
  started = [line for line in lines if "started" in line]
  assert len(started) == 4 and all(" on gpu " in line for line in started), lines
  assert lines[-2].startswith("sweep: 4/4 finished, 0 failed, 0 running")


def test_children_side_by_side_get_disjoint_cores(tmp_path, monkeypatch):
  mine = os.sched_getaffinity(0)
  os.sched_setaffinity(0, range(os.cpu_count() or 1))  # every core, not the xdist worker's one
  try:
    cores = sorted(os.sched_getaffinity(0))
    rc, seen, _ = _sweep(tmp_path, monkeypatch, "cpu")
  finally:
    os.sched_setaffinity(0, mine)
  assert rc == 0 and all(s["cuda"] is None for s in seen)
  halves = {tuple(s["cpus"]) for s in seen}
  assert len(cores) < 2 or (len(halves) == 2 and not set.intersection(*map(set, halves)))
  assert set().union(*halves) <= set(cores)


def test_progress_counts_failures_and_projects_the_time_left():
  p = Progress(5, now=0.0)
  p.skipped()
  assert p.line(running=2, now=10.0).endswith("ETA after the first point")
  p.finished("done")
  p.finished("failed")
  assert p.line(running=1, now=100.0) == (
    "sweep: 3/5 finished, 1 failed, 1 running, elapsed 0:01:40, ETA 0:01:40"
  )
