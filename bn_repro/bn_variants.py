"""The variants of the BN layer (`bn_layer.BatchNorm`), as pure functions built on `batch_norm`'s.

Each is an option of `BatchNorm`, and each equals plain BN with its knob at the neutral
value (tests/test_bn_variants.py):
  ghost batches      `virtual_batch_size`: `batch_normalize` vmapped over sub-batches
                     of a chosen size (Hoffer et al. 2017), on every device alike:
                     `ghost_batch_normalize`, and `pooled_ghost_moments` for the
                     population.
  renormalization    `renorm`: Batch Renormalization (Ioffe 2017); `renorm_correction`
                     gives r and d, which enter `batch_normalize` as a changed
                     scale and bias (r, d carry no gradient, as in the paper):
                     `renorm_normalize`, with the limits of `renorm_limits`.
  noise              `noise_mean`/`noise_scale`/`noise_std`: `add_noise` after BN,
                     random non-zero-mean, non-unit-variance, redrawn every step
                     (after Santurkar et al. 2018).
  frozen statistics  `freeze_step`: from that update on, training uses the population
                     statistics (`batch_norm.normalize`) and stops updating them; the
                     layer itself switches.
Schedules (renorm warm-up, freezing) read the layer's update counter `count`.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bn_repro import batch_norm
from bn_repro.batch_norm import Array, Axes, Moments


def ghost_batch_normalize(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  virtual_batch_size: int,
  axes: Axes,
  epsilon: float,
  dtype: Any = None,
) -> tuple[Array, Moments]:
  """`batch_normalize` on each run of `virtual_batch_size` examples along axis 0 by itself.

  Statistics never cross devices: each device splits its own share of the batch,
  so the sub-batches (and the numbers) are the same for any device count that
  keeps the global batch's order. `axes` must include 0. Returns the moments of
  every sub-batch, stacked on a leading axis.
  """
  axes = batch_norm.canonical_axes(x.ndim, axes)
  if 0 not in axes:
    raise ValueError(f"ghost batches split axis 0, which must be reduced over; axes={axes}")
  if x.shape[0] % virtual_batch_size:
    raise ValueError(
      f"a batch of {x.shape[0]} examples does not split into virtual batches "
      f"of {virtual_batch_size}"
    )
  ghosts = x.reshape((x.shape[0] // virtual_batch_size, virtual_batch_size) + x.shape[1:])
  y, mom = jax.vmap(
    lambda g: batch_norm.batch_normalize(g, scale, bias, axes=axes, epsilon=epsilon, dtype=dtype)
  )(ghosts)
  return y.reshape(x.shape), mom


def pooled_ghost_moments(ghosts: Moments, axis_name: str | None) -> Moments:
  """The moments the population sees: the average over the ghost batches and devices."""
  devices = 1 if axis_name is None else lax.axis_size(axis_name)
  pooled = lambda v: batch_norm.all_reduce(jnp.mean(v, 0), axis_name) / devices
  return Moments(pooled(ghosts.mean), pooled(ghosts.var), ghosts.count[0])


def renorm_limits(
  step: Array, rmax: float, dmax: float, start: int, rmax_ramp: int, dmax_ramp: int
) -> tuple[Array, Array]:
  """Batch Renormalization's warm-up: until `start` r_max = 1 and d_max = 0 (plain BN);
  then r_max rises linearly to `rmax` over `rmax_ramp` steps and d_max to `dmax`
  over `dmax_ramp` steps (a ramp <= 0 switches at `start`)."""
  t = jnp.asarray(step, jnp.float32) - start

  def frac(ramp):
    return jnp.clip(t / ramp, 0.0, 1.0) if ramp > 0 else (t >= 0).astype(jnp.float32)

  return 1.0 + (rmax - 1.0) * frac(rmax_ramp), dmax * frac(dmax_ramp)


def renorm_correction(
  batch: Moments, mean: Array, var: Array, rmax: Array, dmax: Array, epsilon: float
) -> tuple[Array, Array]:
  """Batch Renormalization's r = sigma_B / sigma and d = (mu_B - mu) / sigma, clipped to
  [1/rmax, rmax] and [-dmax, dmax] (no gradient flows through them).

  Training then outputs scale * (xhat * r + d) + bias, which is `batch_normalize`
  with scale * r and bias + scale * d; r = 1, d = 0 is plain BN.
  """
  sigma = jnp.sqrt(var + epsilon)
  r = jnp.clip(jnp.sqrt(batch.var + epsilon) / sigma, 1.0 / rmax, rmax)
  d = jnp.clip((batch.mean - mean) / sigma, -dmax, dmax)
  return lax.stop_gradient(r), lax.stop_gradient(d)


def renorm_normalize(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  mean: Array,
  var: Array,
  step: Array,
  *,
  rmax: float,
  dmax: float,
  start: int,
  rmax_end: int,
  dmax_end: int,
  axes: Axes,
  epsilon: float,
  axis_name: str | None = None,
  dtype: Any = None,
) -> tuple[Array, Moments]:
  """Batch Renormalization in training: the output and the batch moments of `x`.

  `mean`, `var`: the population statistics; `step`: the layer's update count, which
  sets the limits (`renorm_limits`: from (1, 0) at `start` to (rmax, dmax) at
  `rmax_end` and `dmax_end`).
  """
  batch = batch_norm.moments(lax.stop_gradient(x), axes, axis_name=axis_name)
  rmax_t, dmax_t = renorm_limits(step, rmax, dmax, start, rmax_end - start, dmax_end - start)
  r, d = renorm_correction(batch, mean, var, rmax_t, dmax_t, epsilon)
  gamma = jnp.ones_like(r) if scale is None else scale.astype(r.dtype)
  beta = jnp.zeros_like(d) if bias is None else bias.astype(d.dtype)
  return batch_norm.batch_normalize(
    x,
    gamma * r,
    beta + gamma * d,
    axes=axes,
    epsilon=epsilon,
    axis_name=axis_name,
    dtype=dtype,
    batch=batch,
  )


def add_noise(
  y: Array, key: Array, feature_axes: tuple[int, ...], *, mean: float, scale: float, std: float
) -> Array:
  """y * s + n: non-zero-mean, non-unit-variance noise on every value, redrawn per call.

  Per feature, a centre mu ~ U(-mean, mean) and a gain v ~ U(1, scale) are drawn; per
  value, s ~ N(v, std^2) and n ~ N(mu, std^2). mean=0, scale=1, std=0 returns y.
  """
  fshape = tuple(y.shape[a] if a in feature_axes else 1 for a in range(y.ndim))
  k_mu, k_v, k_s, k_n = jax.random.split(key, 4)
  mu = jax.random.uniform(k_mu, fshape, jnp.float32, -mean, mean)
  v = jax.random.uniform(k_v, fshape, jnp.float32, 1.0, scale)
  s = v + std * jax.random.normal(k_s, y.shape, jnp.float32)
  n = mu + std * jax.random.normal(k_n, y.shape, jnp.float32)
  return (y.astype(jnp.float32) * s + n).astype(y.dtype)
