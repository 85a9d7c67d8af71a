"""The BN layer: `BatchNorm`, a thin linen module over the pure functions of `batch_norm`
and `bn_variants`.

In training it normalizes with batch statistics and updates the population statistics
(`mean`, `var`, `count` in the `batch_stats` collection); in evaluation it normalizes with
the population statistics. Every variant is a field, neutral by default, so every model
gets them all from `config.bn.*`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from bn_repro import bn_variants
from bn_repro.batch_norm import (
  Array,
  Axes,
  batch_normalize,
  canonical_axes,
  normalize,
  update_population,
)


class BatchNorm(nn.Module):
  """BN layer: batch statistics in training, population statistics in evaluation.

  Statistics are taken over every axis except `feature_axes` ("per activation" for
  a dense layer's (batch, features) input; "spatial" per feature map for NHWC).
  Population statistics live in the `batch_stats` collection as float32 `mean`,
  `var` and an int32 `count` of updates, and are updated in training per
  `population`: "ema" (running <- decay * running + (1 - decay) * batch, as Flax;
  note PyTorch's momentum is 1 - decay) or "average" (the exact mean over all
  batches seen since the statistics were reset: Algorithm 2). `unbiased` applies
  m/(m-1) to each batch variance before it enters the population.

  Attributes:
    use_running_average: evaluation mode (population statistics, nothing updated).
    feature_axes: axes that index the statistics (default: last).
    epsilon: added to the variance inside the square root.
    decay: EMA decay (only for population="ema").
    population: "ema" or "average".
    unbiased: apply m/(m-1) to batch variances entering the population.
    axis_name: named device axis to compute batch statistics across, or None for
      per-device statistics.
    use_scale / use_bias: learn gamma / beta.
    dtype: output dtype (default: input dtype); statistics are always float32.
    param_dtype: dtype of scale and bias.
    virtual_batch_size: > 0: ghost batches, statistics over runs of this many
      examples of each device's share (0: the whole batch).
    renorm: Batch Renormalization with limits rising from (1, 0) to
      (renorm_rmax, renorm_dmax), starting at update renorm_start and reaching
      them at updates renorm_rmax_end and renorm_dmax_end (Ioffe 2017: 5k, 40k, 25k).
    noise_mean / noise_scale / noise_std: noise after BN in training (`bn_variants.add_noise`;
      needs a 'noise' rng); 0 / 1 / 0 = none.
    freeze_step: >= 0: from this many updates on, training normalizes with the
      population statistics and leaves them as they are (-1: never).
  """

  use_running_average: bool | None = None
  feature_axes: Axes = -1
  epsilon: float = 1e-5
  decay: float = 0.99
  population: str = "ema"
  unbiased: bool = False
  axis_name: str | None = None
  use_scale: bool = True
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable[..., Array] = nn.initializers.ones
  bias_init: Callable[..., Array] = nn.initializers.zeros
  virtual_batch_size: int = 0
  renorm: bool = False
  renorm_rmax: float = 3.0
  renorm_dmax: float = 5.0
  renorm_start: int = 5_000
  renorm_rmax_end: int = 40_000
  renorm_dmax_end: int = 25_000
  noise_mean: float = 0.0
  noise_scale: float = 1.0
  noise_std: float = 0.0
  freeze_step: int = -1

  @nn.compact
  def __call__(
    self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
  ) -> Array:
    """Normalizes `x`; in training also updates `batch_stats` (when mutable)."""
    eval_mode = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    feature_axes = canonical_axes(x.ndim, self.feature_axes)
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    feature_shape = tuple(x.shape[a] for a in feature_axes)

    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, jnp.float32)
    ra_count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
    param = lambda name, init: self.param(name, init, feature_shape, self.param_dtype)
    scale = param("scale", self.scale_init) if self.use_scale else None
    bias = param("bias", self.bias_init) if self.use_bias else None

    dtype = self.dtype or x.dtype

    def population_output():
      return normalize(
        x,
        ra_mean.value,
        ra_var.value,
        scale,
        bias,
        axes=reduce_axes,
        epsilon=self.epsilon,
        dtype=dtype,
      )

    if eval_mode:
      return population_output()
    if mask is not None and (self.virtual_batch_size or self.renorm):
      raise ValueError("masks are not supported with ghost batches or renormalization")
    count = ra_count.value

    def train_batch():
      y, batch = self._normalize_batch(
        x, scale, bias, reduce_axes, dtype, mask, count, ra_mean.value, ra_var.value
      )
      return (y,) + update_population(
        ra_mean.value,
        ra_var.value,
        count.astype(jnp.float32),
        batch,
        mode=self.population,
        decay=self.decay,
        unbiased=self.unbiased,
      )

    def frozen():
      return population_output(), ra_mean.value, ra_var.value

    if self.freeze_step >= 0:
      y, new_mean, new_var = lax.cond(count >= self.freeze_step, frozen, train_batch)
    else:
      y, new_mean, new_var = train_batch()
    if self.noise_mean or self.noise_scale != 1.0 or self.noise_std:
      y = bn_variants.add_noise(
        y,
        self.make_rng("noise"),
        feature_axes,
        mean=self.noise_mean,
        scale=self.noise_scale,
        std=self.noise_std,
      )
    # Skipped while Flax initializes, so that init leaves the defaults in place.
    if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
      ra_mean.value, ra_var.value = new_mean, new_var
      ra_count.value = count + 1
    return y

  def _normalize_batch(self, x, scale, bias, axes, dtype, mask, count, pop_mean, pop_var):
    """Training-mode output and the batch moments that enter the population."""

    if self.virtual_batch_size:
      y, ghosts = bn_variants.ghost_batch_normalize(
        x,
        scale,
        bias,
        virtual_batch_size=self.virtual_batch_size,
        axes=axes,
        epsilon=self.epsilon,
        dtype=dtype,
      )
      return y, bn_variants.pooled_ghost_moments(ghosts, self.axis_name)
    if self.renorm:
      return bn_variants.renorm_normalize(
        x,
        scale,
        bias,
        pop_mean,
        pop_var,
        count,
        rmax=self.renorm_rmax,
        dmax=self.renorm_dmax,
        start=self.renorm_start,
        rmax_end=self.renorm_rmax_end,
        dmax_end=self.renorm_dmax_end,
        axes=axes,
        epsilon=self.epsilon,
        axis_name=self.axis_name,
        dtype=dtype,
      )
    return batch_normalize(
      x,
      scale,
      bias,
      axes=axes,
      epsilon=self.epsilon,
      axis_name=self.axis_name,
      mask=mask,
      dtype=dtype,
    )
