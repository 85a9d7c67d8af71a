"""The one data-parallel seam: per-device SPMD functions with a named axis, under pmap or shard_map.

Everything a step does across devices (gradient mean, BN statistics) is written
with collectives on `AXIS`, so the wrapper that maps a function over devices is
this module's `data_parallel` alone. Arrays crossing it carry a leading device axis.

Batched runs (bn_repro.training.BatchedTrainer) may also spread their run axis over more
devices: `run_parallel` maps the same per-device function over a 2-D mesh,
`RUNS` x `AXIS`, where each row of devices holds its share of the runs and
trains them data-parallel exactly as one run would. On a CPU host,
`add_cpu_devices` first makes one JAX device per core, so that the runs of a
group train on all cores at once instead of sharing one device.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax import lax

from bn_repro.errors import UserError

AXIS = "batch"
# Models so small that splitting their batch over devices costs more than it saves: with
# config.num_devices=0 a single-process run of one trains on the first device alone.
PINNED_MODELS = ("mlp",)
RUNS = "runs"
MIN_CPU_RUNS_PER_ROW = 2

# CPU devices add_cpu_devices made for runs to spread over; devices() leaves them out.
_run_only_cpus = False


def usable_cpus() -> int:
  """The CPUs this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def add_cpu_devices(count: int = 0) -> bool:
  """Gives JAX's CPU backend `count` devices (0: one per usable CPU) for batched runs
  to spread over; True when it did. Call before JAX starts its backends.

  Changes nothing where the number of CPU devices is already set (XLA_FLAGS'
  --xla_force_host_platform_device_count, or jax_num_cpu_devices), and nothing for
  GPU or TPU devices. The extra CPU devices are for run_parallel only: devices()
  still returns the one CPU device a single run sees, so that config.num_devices
  (and with it every number a run computes) means what it means for a run alone.
  """
  global _run_only_cpus
  count = count or usable_cpus()
  if (
    count <= 1
    or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    or jax.config.jax_num_cpu_devices >= 0  # type: ignore[attr-defined]
  ):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backends have started: their devices stay as they are
    return False
  _run_only_cpus = True
  return True


def _local_devices() -> list[jax.Device]:
  """The local devices a single run may use (without add_cpu_devices' extra CPU devices)."""
  available = jax.local_devices()
  if _run_only_cpus and available[0].platform == "cpu":
    return available[:1]
  return available


def devices(num_devices: int = 0) -> list[jax.Device]:
  """The first `num_devices` local devices (0: all of them), in pmap's order."""
  available = _local_devices()
  if num_devices < 0 or num_devices > len(available):
    raise UserError(
      f"asks for {num_devices} devices but {len(available)} are available; "
      f"set it to 0 (all) or at most {len(available)}",
      field="config.num_devices",
    )
  return available[:num_devices] if num_devices else available


def is_pinned(config: Any) -> bool:
  """Whether a run of `config` trains on the first local device alone: a model in
  PINNED_MODELS with num_devices=0 in a single-process run."""
  return (
    not config.num_devices
    and config.model.name in PINNED_MODELS
    and jax.process_count() == 1
    and len(devices()) > 1
  )


def run_devices(config: Any) -> list[jax.Device]:
  """The devices a run trains on: `devices(config.num_devices)`, or the first one alone
  when `is_pinned`, so that such a run's numbers are those of a one-device host."""
  devs = devices(config.num_devices)
  return devs[:1] if is_pinned(config) else devs


def log_pinned(config: Any) -> None:
  """The log line saying that a run is pinned (after its input has been checked)."""
  if is_pinned(config):
    logging.info(
      "The %s model trains on 1 of %d local devices (pinned: too small to gain from "
      "splitting its batch); --config.num_devices=N spreads it over N",
      config.model.name,
      len(devices()),
    )


def run_shards(num_runs: int, data_devices: int) -> int:
  """How many rows of `data_devices` devices the runs of a batched group spread over:
  the largest divisor of `num_runs` whose rows fit in this process's local devices
  (1 with several processes, whose devices the data-parallel axis already spans).

  On CPU a row keeps at least two runs (MIN_CPU_RUNS_PER_ROW): measured with jax 0.10.2,
  a row of one run rounds differently from the same run alone (XLA:CPU's results
  depend on the program's shapes and layout; the cause was not traced), while with 2-4
  runs a row every run matched its run alone bit for bit (docs/RESULTS.md, Batched runs).
  """
  if jax.process_count() > 1:
    return 1
  fit = len(jax.local_devices()) // data_devices
  if jax.local_devices()[0].platform == "cpu":
    fit = min(fit, max(1, num_runs // MIN_CPU_RUNS_PER_ROW))
  return max(d for d in range(1, min(num_runs, fit) + 1) if num_runs % d == 0)


def _mesh(devs: Sequence[jax.Device], shards: int) -> jax.sharding.Mesh:
  """`devs` as a RUNS x AXIS mesh (RUNS of size `shards`), or as AXIS alone (shards 0)."""
  if not shards:
    return jax.sharding.Mesh(np.array(devs), (AXIS,))
  return jax.sharding.Mesh(np.array(devs).reshape(shards, -1), (RUNS, AXIS))


def _spec(run_axis: int | None) -> jax.sharding.PartitionSpec:
  """Device axis 0 over AXIS; axis `run_axis` (if any) over RUNS."""
  if run_axis is None:
    return jax.sharding.PartitionSpec(AXIS)
  return jax.sharding.PartitionSpec(AXIS, *[None] * (run_axis - 1), RUNS)


def shard(
  tree: Any, devs: Sequence[jax.Device], *, shards: int = 0, run_axis: int | None = None
) -> Any:
  """Puts arrays whose leading axis has one entry per device onto those devices.

  With `shards` (run_parallel's layout), `devs` holds `shards` rows of devices, the
  leading axis has one entry per device of a row (each row gets all of it), and
  axis `run_axis`, if given, is split over the rows. Without `shards` (data_parallel's
  layout) there are no rows, and `run_axis` stays whole on every device.
  """
  spec = _spec(run_axis if shards else None)
  sharding = jax.sharding.NamedSharding(_mesh(devs, shards), spec)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def replicate(
  tree: Any, devs: Sequence[jax.Device], *, shards: int = 0, run_axis: int | None = None
) -> Any:
  """One copy of every leaf per device (of a row, with `shards`: see shard), stacked on a
  new leading axis; `run_axis` counts that axis."""
  n = len(devs) // max(shards, 1)
  return shard(
    jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree),
    devs,
    shards=shards,
    run_axis=run_axis,
  )


def unreplicate(tree: Any) -> Any:
  """Device 0's copy of a replicated tree, as host NumPy arrays."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def pmean(tree: Any) -> Any:
  """Mean over `AXIS`; the identity (no all-reduce op) when there is one device."""
  return tree if lax.axis_size(AXIS) == 1 else lax.pmean(tree, AXIS)


BACKENDS = ("pmap", "shard_map")


def data_parallel(
  fn: Callable,
  devs: Sequence[jax.Device],
  *,
  donate_argnums: Sequence[int] = (),
  backend: str = "pmap",
) -> Any:  # a jax.jit / jax.pmap function (with .lower)
  """Maps a per-device function (collectives over `AXIS`) over `devs`.

  "pmap": jax.pmap. "shard_map": jax.jit of jax.shard_map over a 1-D mesh, with
  each device's block (leading axis of size 1) squeezed so that `fn` sees the same
  per-device shapes as under pmap. Both take and return arrays whose leading axis
  has one entry per device.
  """
  if backend == "pmap":
    # With several processes, pmap maps over every process's devices (each process passes
    # its local shard), so that collectives over AXIS span the whole run.
    mapped = None if jax.process_count() > 1 else list(devs)
    return jax.pmap(fn, axis_name=AXIS, devices=mapped, donate_argnums=tuple(donate_argnums))
  if jax.process_count() > 1:
    raise ValueError("multi-process runs use the pmap backend")
  if backend == "shard_map":
    return _jit_shard_map(fn, _mesh(devs, 0), _spec(None), _spec(None), donate_argnums)
  raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _jit_shard_map(
  fn: Callable,
  mesh: jax.sharding.Mesh,
  in_specs: Any,
  out_specs: Any,
  donate_argnums: Sequence[int],
) -> Any:  # a jax.jit / jax.pmap function (with .lower)
  """jax.jit of jax.shard_map with each device's block (leading axis of size 1)
  squeezed, so that `fn` sees the same per-device shapes as under pmap."""

  def per_block(*args):
    out = fn(*jax.tree.map(lambda x: x[0], args))
    return jax.tree.map(lambda x: x[None], out)

  mapped = jax.shard_map(
    per_block, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
  )
  return jax.jit(mapped, donate_argnums=tuple(donate_argnums))


def run_parallel(
  fn: Callable,
  devs: Sequence[jax.Device],
  shards: int,
  *,
  in_run_axes: Sequence[int | None],
  out_run_axes: Sequence[int | None],
  donate_argnums: Sequence[int] = (),
) -> Any:  # a jax.jit / jax.pmap function (with .lower)
  """Maps a per-device function over `shards` rows of data-parallel devices, each row
  taking its share of the runs: jax.jit of jax.shard_map over the RUNS x AXIS mesh.

  Arguments and results carry the leading device axis of data_parallel (one entry
  per device of a row) and, where `in_run_axes` / `out_run_axes` give one (counting
  that leading axis), a run axis split over the rows; `fn` sees its row's runs and
  the same collectives on AXIS as under data_parallel (none cross RUNS). pmap has no
  second mesh axis, so this is shard_map whatever config.parallel says.
  """
  if jax.process_count() > 1:
    raise ValueError("runs spread over devices in single-process runs only")
  return _jit_shard_map(
    fn,
    _mesh(devs, shards),
    tuple(_spec(a) for a in in_run_axes),
    tuple(_spec(a) for a in out_run_axes),
    donate_argnums,
  )
