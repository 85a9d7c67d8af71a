"""What a job's machine has: software versions, CPU, memory, accelerators.

`python -m bn_repro.sweeps.environment` prints it as one line of JSON. The runner calls
`probe_environment`, which runs that in a child process with a job's environment, so that
it sees what a trainer sees (XLA_FLAGS included) and the runner never initializes an
accelerator; each point's directory keeps the result (RunDir.write_environment).
"""

import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

MODULE = "bn_repro.sweeps.environment"  # `python -m MODULE` prints probe() as JSON
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "ml-collections")


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _first(path: str, key: str) -> str | None:
  """The value of the first `key: value` line of `path` (/proc files)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith(key):
          return line.split(":", 1)[1].strip()
  except OSError:
    return None
  return None


def _devices() -> dict[str, Any]:
  """JAX's backend and devices, or why there are none (imports JAX: a probe's child only)."""
  try:
    import jax  # a failing import is a result here

    devices = jax.devices()
    return {
      "backend": jax.default_backend(),
      "platform": devices[0].platform if devices else "cpu",
      "device_count": len(devices),
      "devices": f"{len(devices)} x {devices[0].device_kind}" if devices else "none",
    }
  except Exception as e:
    return {"devices": f"unavailable: {type(e).__name__}: {e}"}


def probe() -> dict[str, Any]:
  """This process's environment (JAX is imported, and its backends start)."""
  mem = _first("/proc/meminfo", "MemTotal")
  out = {
    "python": platform.python_version(),
    "platform": platform.platform(),
    "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    # bn_repro.parallel.usable_cpus imports JAX; these two lines do not.
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
    "packages": {p: _version(p) for p in PACKAGES},
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  out.update(_devices())
  return out


def probe_environment(env: Mapping[str, str]) -> dict[str, Any]:
  """`probe()` as a trainer process with `env` sees it (in a child process); on failure
  {"error": ...}."""
  try:
    r = subprocess.run(
      [sys.executable, "-m", MODULE],
      env=dict(env),
      capture_output=True,
      text=True,
      timeout=300,
      stdin=subprocess.DEVNULL,
      check=False,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])
  except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
    return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
  print(json.dumps(probe()))
