"""8 fake CPU devices for every test; set before jax is imported anywhere. Under pytest-xdist
each worker gets its own CPU core (while there are enough), so that the workers' XLA thread
pools, and the runs their tests start, do not preempt each other (bn_repro/placement.py);
they share one JAX compilation cache."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One JAX compilation cache for the whole session: the xdist workers and the runs their tests
# start compile the same small programs many times (a cached program is the same executable,
# so no number changes). Made by the first process to load this file (the xdist controller,
# whose environment the workers inherit) and removed when it exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="bn_repro_tests_jax_cache_")
  atexit.register(shutil.rmtree, _cache, True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
if _worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
  _cores = sorted(os.sched_getaffinity(0))
  if len(_cores) >= int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.sched_setaffinity(0, {_cores[int(_worker[2:]) % len(_cores)]})
