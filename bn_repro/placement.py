"""Which CPU cores a run uses (`config.cpu_cores`), decided before JAX starts.

XLA:CPU runs each operation on a thread pool as wide as the cores the process may use, and
splits the operation's work over that pool. A small model's operations (the MNIST MLP's are
GEMMs of 60 × 100 × 784 and smaller) are too small to split: the threads' hand-offs cost more
than the second core gives, and a run pinned to one core takes more steps a second than one
spread over two. A large model's operations split well and use every core. The crossover is
measured in docs/RESULTS.md ("CPU placement") as the step's FLOPs; `SMALL_STEP_FLOPS` is that
crossover.

`cpu_cores` is "auto" (one core when the step is small, else all), "all", or a comma list of
core ids ("0", "2,3"). An "auto" run claims its core with a lock file in the temp directory,
so runs started independently on one machine take different cores while there are free ones
(and share all of them when there are not). Every choice stays within the cores the process
was given (its affinity mask, as `taskset`, a sweep's launcher or a cluster sets it), so runs
that go side by side get disjoint cores from whoever starts them. On GPU and TPU hosts (and
where the OS has no affinity call) "auto" leaves the process as it is.
"""

import contextlib
import fcntl
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from bn_repro.errors import UserError

AUTO, ALL = "auto", "all"
# Below this many FLOPs a training step (all runs of a batched group together) runs about as
# fast or faster on one core than on two: one core / two measured 1.10x at 36 MFLOP (the paper's
# MLP), 1.03x at 86, 0.77x at 230 and 0.62x at 392 on an Intel Xeon; 0.97-1.03x at 36, 0.93x at
# 86, 0.61x at 392 on an AMD EPYC (docs/RESULTS.md, "CPU placement").
SMALL_STEP_FLOPS = 1e8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def parse(spec: str) -> str | tuple[int, ...]:
  """AUTO, ALL or the core ids of `spec`; UserError naming the accepted forms."""
  spec = str(spec).strip()
  if spec in (AUTO, ALL):
    return spec
  try:
    ids = tuple(sorted({int(s) for s in spec.split(",")}))
  except ValueError:
    ids = ()
  if not ids or min(ids) < 0:
    raise UserError(
      f"{spec!r} is not a placement; use 'auto', 'all' or core ids such as '0' or '0,1'",
      field="config.cpu_cores",
    )
  return ids


def step_flops(config: Any, runs: int = 1) -> float | None:
  """FLOPs of one training step of `runs` runs of `config` (forward and backward: 3 GEMMs a
  dense layer), or None for models without a closed form (they count as large)."""
  model = config.model
  if model.get("name") != "mlp":
    return None
  widths = [784, *model.hidden, model.num_classes]
  macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  return 6.0 * macs * config.batch_size * runs


def choose(spec: str, flops: float | None, allowed: Sequence[int]) -> tuple[int, ...]:
  """The cores a run gets: `spec` (parse) within `allowed`, for a step of `flops` FLOPs."""
  allowed = tuple(sorted(allowed))
  want = parse(spec)
  if isinstance(want, str):  # AUTO or ALL
    small = want == AUTO and flops is not None and flops < SMALL_STEP_FLOPS
    return allowed[:1] if small else allowed
  missing = sorted(set(want) - set(allowed))
  if missing:
    raise UserError(
      f"core(s) {missing} are not among this process's cores {list(allowed)}; pick from "
      "those or use 'auto'",
      field="config.cpu_cores",
    )
  return want


def _on_accelerator() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0] not in ("cpu", "")
  return any(importlib.util.find_spec(p) is not None for p in _ACCELERATOR_PLUGINS)


def _pin(cores: Sequence[int]) -> None:
  """Every thread of this process (those numpy or absl started too) onto `cores`."""
  for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
    with contextlib.suppress(OSError):  # a thread that ended meanwhile
      os.sched_setaffinity(int(tid), cores)


def apply(config: Any, runs: int = 1) -> str:
  """Pins this process as `config.cpu_cores` says (before JAX creates its CPU client) and
  returns the placement as one line for the run's start block."""
  spec = str(config.get("cpu_cores", AUTO))
  if not hasattr(os, "sched_setaffinity"):
    return "placement: this OS sets no CPU affinity; the process keeps every core"
  if spec == AUTO and _on_accelerator():
    return "placement: accelerator host; CPU affinity unchanged"
  allowed = sorted(os.sched_getaffinity(0))
  flops = step_flops(config, runs)
  cores = choose(spec, flops, allowed)
  note = ""
  if spec == AUTO and len(cores) == 1 < len(allowed):
    free = next((c for c in allowed if _claim(c)), None)
    cores = tuple(allowed) if free is None else (free,)
    note = "; every core holds another run" if free is None else ""
  if set(cores) != set(allowed):
    _pin(cores)
  size = f"{flops / 1e6:.0f} MFLOP/step" if flops is not None else "no closed-form FLOPs"
  return (
    f"placement: CPU core(s) {','.join(map(str, cores))} of {len(allowed)} "
    f"(cpu_cores={spec}, {size}{note})"
  )


_CLAIMED: list[int] = []  # descriptors of the claimed cores' lock files, held until exit


def _claim(core: int) -> bool:
  """Claims `core` for this process's lifetime (an flock on a file in the temp directory),
  so that "auto" runs started independently on one machine take different cores."""
  path = os.path.join(tempfile.gettempdir(), f"bn_repro-cpu{core}.lock")
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    return False
  _CLAIMED.append(fd)
  return True
