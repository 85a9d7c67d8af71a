"""8 fake CPU devices for every test; set before jax is imported anywhere. Under pytest-xdist
each worker gets its own CPU core (while there are enough), so that the workers' XLA thread
pools, and the runs their tests start, do not preempt each other (bn_repro/placement.py)."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
if _worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
  _cores = sorted(os.sched_getaffinity(0))
  if len(_cores) >= int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.sched_setaffinity(0, {_cores[int(_worker[2:]) % len(_cores)]})
