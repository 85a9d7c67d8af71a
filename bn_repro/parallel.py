"""The one data-parallel seam: per-device SPMD functions with a named axis, run under pmap or shard_map.

Everything a step does across devices (gradient mean, BN statistics) is written
with collectives on `AXIS`, so the wrapper that maps a function over devices is
this module's `data_parallel` alone. Arrays crossing it carry a leading device axis.
"""

from typing import Any, Callable, Sequence

import jax
from jax import lax
import numpy as np

from bn_repro.errors import UserError

AXIS = "batch"


def devices(num_devices: int = 0) -> list[jax.Device]:
  """The first `num_devices` local devices (0: all of them), in pmap's order."""
  available = jax.local_devices()
  if num_devices < 0 or num_devices > len(available):
    raise UserError(
        f"asks for {num_devices} devices but {len(available)} are available; "
        f"set it to 0 (all) or at most {len(available)}", field="config.num_devices")
  return available[:num_devices] if num_devices else available


def _sharding(devs: Sequence[jax.Device]) -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(devs), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def shard(tree: Any, devs: Sequence[jax.Device]) -> Any:
  """Puts arrays whose leading axis has one entry per device onto those devices."""
  sharding = _sharding(devs)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: Any, devs: Sequence[jax.Device]) -> Any:
  """One copy of every leaf per device, stacked on a new leading axis."""
  n = len(devs)
  return shard(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree),
               devs)


def unreplicate(tree: Any) -> Any:
  """Device 0's copy of a replicated tree, as host NumPy arrays."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def pmean(tree: Any) -> Any:
  """Mean over `AXIS`; the identity (no all-reduce op) when there is one device."""
  return tree if lax.axis_size(AXIS) == 1 else lax.pmean(tree, AXIS)


BACKENDS = ("pmap", "shard_map")


def data_parallel(fn: Callable, devs: Sequence[jax.Device], *,
                  donate_argnums: Sequence[int] = (), backend: str = "pmap") -> Callable:
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
    mesh = jax.sharding.Mesh(np.array(devs), (AXIS,))
    spec = jax.sharding.PartitionSpec(AXIS)

    def per_block(*args):
      out = fn(*jax.tree.map(lambda x: x[0], args))
      return jax.tree.map(lambda x: x[None], out)

    mapped = jax.shard_map(per_block, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    return jax.jit(mapped, donate_argnums=tuple(donate_argnums))
  raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
