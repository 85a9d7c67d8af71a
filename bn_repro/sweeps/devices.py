"""Which accelerators and CPU cores each of a sweep's side-by-side jobs gets.

The runner learns the platform and the number of local devices from the environment
probe (bn_repro.sweeps.environment), then hands each job a `Slot` from a `DevicePool`:

- GPU / TPU: disjoint device ids, made the only ones the job's process sees through the
  platform's variable (`CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`, `TPU_VISIBLE_CHIPS`
  with the chip bounds of one process), so `--parallel=8` on 8 GPUs puts one job on each
  and `--parallel=2` with 4-device points gives each its half. A point asks for its
  `num_devices`; 0 means its share, the devices / --parallel. A job waits until its
  devices are free. With more jobs than devices, jobs share them round-robin.
- CPU: with several jobs at once, disjoint sets of the runner's cores (the job's CPU
  affinity, set before it starts), the cores / --parallel each; one job alone keeps all.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence

# The variable that limits a process to some accelerators, by JAX platform name.
VISIBLE = {
  "gpu": "CUDA_VISIBLE_DEVICES",
  "cuda": "CUDA_VISIBLE_DEVICES",
  "rocm": "ROCR_VISIBLE_DEVICES",
}
TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}  # chips of one process
TPU_PORT = 8476  # TPU_PROCESS_PORT of slot 0; slot i uses TPU_PORT + i


@dataclasses.dataclass(frozen=True)
class Slot:
  """What one job may use: accelerator ids (none on CPU) and CPU cores (none: all)."""

  index: int
  devices: tuple[int, ...] = ()
  cpus: tuple[int, ...] = ()
  platform: str = "cpu"

  def env(self) -> dict[str, str]:
    """The variables that confine a process to this slot's accelerators."""
    if not self.devices:
      return {}
    ids = ",".join(map(str, self.devices))
    if self.platform == "tpu":
      return {
        "TPU_VISIBLE_CHIPS": ids,
        "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_BOUNDS.get(len(self.devices), "1,1,1"),
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": str(TPU_PORT + self.index),
      }
    return {VISIBLE.get(self.platform, "CUDA_VISIBLE_DEVICES"): ids}

  def describe(self) -> str:
    """E.g. "gpu 2,3" or "cpu 1": for the runner's lines and the point's environment.json."""
    if self.devices:
      return f"{self.platform} {','.join(map(str, self.devices))}"
    return f"cpu {','.join(map(str, self.cpus))}" if self.cpus else ""


def wanted(resolved: Mapping, share: int) -> int:
  """The devices a point's job takes: its num_devices, or (0) its `share`."""
  n = int(resolved.get("num_devices", 0) or 0)
  return n if n > 0 else share


class DevicePool:
  """The local devices and cores, lent to at most `parallel` jobs at once."""

  def __init__(
    self,
    platform: str,
    num_devices: int,
    parallel: int,
    cpus: Sequence[int] | None = None,
    ids: Sequence[int] | None = None,
  ):
    """`ids`: the devices' ids as the visible-devices variable names them (default
    0..num_devices-1), so a runner started with CUDA_VISIBLE_DEVICES=4,5 lends 4 and 5."""
    self.platform = platform
    self.parallel = parallel
    self.accelerator = platform not in ("cpu", "") and num_devices > 0
    ids = list(range(num_devices)) if ids is None or len(ids) != num_devices else list(ids)
    self.ids = ids
    self.free = list(ids) if self.accelerator else []
    self.num_devices = num_devices if self.accelerator else 0
    self.share = max(1, self.num_devices // parallel) if self.accelerator else 0
    cores = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    self.cores = cores
    self.free_slots = list(range(parallel))
    self._round_robin = self.accelerator and self.num_devices < parallel

  def _cores(self, index: int) -> tuple[int, ...]:
    if self.accelerator or self.parallel == 1 or not self.cores:
      return ()
    n = len(self.cores)
    if n < self.parallel:
      return (self.cores[index % n],)
    return tuple(self.cores[index * n // self.parallel : (index + 1) * n // self.parallel])

  def acquire(self, want: int) -> Slot | None:
    """A slot with `want` devices (capped at all of them), or None until one is released."""
    if not self.free_slots:
      return None
    index = self.free_slots[0]
    devices: tuple[int, ...] = ()
    if self._round_robin:
      devices = (self.ids[index % self.num_devices],)
    elif self.accelerator:
      want = min(max(want, 1), self.num_devices)
      if len(self.free) < want:
        return None
      devices = tuple(self.free[:want])
      self.free = self.free[want:]
    self.free_slots.pop(0)
    return Slot(index, devices, self._cores(index), self.platform)

  def release(self, slot: Slot) -> None:
    self.free_slots = sorted([*self.free_slots, slot.index])
    if self.accelerator and not self._round_robin:
      self.free = sorted([*self.free, *slot.devices])


def pool_from_probe(
  environment: Mapping, parallel: int, env: Mapping[str, str] | None = None
) -> DevicePool:
  """The pool for the machine `environment` (the probe's result) describes, within the
  devices the runner's own visible-devices variable in `env` allows."""
  platform = str(environment.get("platform", "cpu"))
  var = "TPU_VISIBLE_CHIPS" if platform == "tpu" else VISIBLE.get(platform, "")
  given = (env if env is not None else os.environ).get(var, "")
  try:
    ids = [int(x) for x in given.split(",")] if given.strip() else None
  except ValueError:  # GPU UUIDs: keep them out of reach, lend all as 0..n-1
    ids = None
  return DevicePool(platform, int(environment.get("device_count", 0)), parallel, ids=ids)


def confine(cpus: Sequence[int]) -> None:
  """In a job's process before it runs: its CPU affinity (nothing when `cpus` is empty)."""
  if cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cpus)
