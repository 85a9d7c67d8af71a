"""LSTM classifier of images read as sequences, with recurrent BN (Cooijmans et al., 2016).

The paper names recurrent networks as future work; Cooijmans et al. ("Recurrent Batch
Normalization") apply BN inside the LSTM cell with statistics kept separately for every
time step. With BN the cell is their BN-LSTM:

  (i, f, g, o) = BN(W_h h_{t-1}; gamma_h) + BN(W_x x_t; gamma_x) + b
  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * act(g)
  h_t = sigmoid(o) * act(BN(c_t; gamma_c, beta_c))

The two gate-input BNs have no beta (the one bias b serves both); act is tanh unless
`nonlinearity` says otherwise. Without BN the three BNs are the identity.

Per-time-step statistics: batch moments are taken over the batch (and devices of
`axis_name`) separately at every step t, and the population statistics are arrays with
a leading time axis, mean and var of shape (T, features); evaluation normalizes step t
with the population statistics of step t. gamma/beta are shared over time. The math is
`batch_norm`'s pure functions (`batch_normalize` in training, `normalize` in evaluation,
`update_population` for the population), so `population` ("ema" / "average") and
`unbiased` mean what they mean for `bn_layer.BatchNorm`.

Choices (Cooijmans et al. where they state one; attributes where it may matter):
  * Gates are stacked in the order (i, f, g, o) along the 4 * hidden axis of `kernel_x`
    (inputs, 4 * hidden), `kernel_h` (hidden, 4 * hidden) and `bias`.
  * gamma of all three BNs starts at `bn_scale_init` = 0.1 (their recommendation: unit
    gamma saturates the gates and kills the gradient through time); beta_c starts at 0.
  * `kernel_h` starts block-orthogonal (each gate's hidden x hidden block an orthogonal
    matrix); `kernel_x` uses `kernel_init` (the configs' N(0, 1/fan_in)); the forget-gate
    part of `bias` starts at `forget_bias` = 1, the rest at 0.
  * h_0 = c_0 = 0, so W_h h_0 is 0 for every example and its BN at step 0 outputs 0
    (its batch and population variance are 0; epsilon keeps the division finite).
    Likewise, at steps where nearly every sequence is the same (blank image rows) the
    batch variance is near 0 and BN multiplies the few differences by up to
    1 / sqrt(epsilon): a small epsilon makes those steps' gradients explode, which is
    why bn_repro/configs/seq_mnist.py raises it.
  * The classifier is a Dense layer on the last hidden state h_T.
  * The time loop is one `lax.scan`, so the 784-step pixel sequence compiles as fast as
    the 28-step row sequence.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bn_repro import batch_norm
from bn_repro.models import common

SEQUENCES = ("rows", "pixels")
# Per-time-step BNs of the cell: name -> the width of what each normalizes, in units of `hidden`.
BNS = {"x": 4, "h": 4, "c": 1}


def as_sequence(images: jax.Array, sequence: str) -> jax.Array:
  """(batch, height, width, channels) images as (time, batch, inputs).

  "rows": one row per step (28 steps of 28 values for MNIST); "pixels": one pixel per
  step in raster order (784 steps of 1 value).
  """
  if sequence not in SEQUENCES:
    raise ValueError(f"sequence {sequence!r} is not one of {SEQUENCES}")
  b, height = images.shape[:2]
  x = images.reshape((b, height, -1) if sequence == "rows" else (b, -1, images.shape[-1]))
  return jnp.swapaxes(x, 0, 1)


def block_orthogonal(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32):
  """A (n, k * n) matrix of k orthogonal n x n blocks (one per gate)."""
  n, total = shape
  keys = jax.random.split(key, total // n)
  return jnp.concatenate([nn.initializers.orthogonal()(k, (n, n), dtype) for k in keys], axis=1)


class LSTM(nn.Module):
  """One-layer LSTM over an image's rows or pixels, then Dense on h_T; BN-LSTM with `use_bn`.

  Variables: params `kernel_x`, `kernel_h`, `bias`, the classifier `logits`, and with BN
  `scale_x`, `scale_h`, `scale_c`, `bias_c` (gamma/beta, one per feature, shared over
  time); batch_stats `mean_x`, `var_x`, `mean_h`, `var_h`, `mean_c`, `var_c` of shape
  (T, features) and `count`, the number of population updates (all three BNs update
  together), which `batch_norm.reset_population` resets like a BatchNorm layer's.

  Attributes:
    hidden: LSTM width.
    num_classes: outputs (logits).
    sequence: "rows" or "pixels" (see `as_sequence`).
    nonlinearity: act in the equations above, a name in `common.NONLINEARITIES`.
    use_bn: the BN-LSTM (per-time-step statistics) instead of the plain LSTM.
    epsilon, decay, population, unbiased: as for `bn_layer.BatchNorm`.
    axis_name: named device axis batch statistics are reduced across, or None.
    bn_scale_init: initial gamma of the three BNs.
    forget_bias: initial bias of the forget gate.
    kernel_init: initializer of `kernel_x` and the classifier's kernel.
    dtype: compute dtype; parameters and statistics stay float32.
  """

  hidden: int = 100
  num_classes: int = 10
  sequence: str = "rows"
  nonlinearity: str = "tanh"
  use_bn: bool = False
  epsilon: float = 1e-5
  decay: float = 0.99
  population: str = "ema"
  unbiased: bool = False
  axis_name: str | None = None
  bn_scale_init: float = 0.1
  forget_bias: float = 1.0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    xs = as_sequence(x, self.sequence).astype(self.dtype)
    steps, batch, inputs = xs.shape
    n = self.hidden
    act = common.NONLINEARITIES[self.nonlinearity]
    kernel_x = self.param("kernel_x", self.kernel_init, (inputs, 4 * n), jnp.float32)
    kernel_h = self.param("kernel_h", block_orthogonal, (n, 4 * n), jnp.float32)
    bias = self.param(
      "bias", lambda _, s: jnp.zeros(s).at[n : 2 * n].set(self.forget_bias), (4 * n,)
    )
    kernel_x, kernel_h = kernel_x.astype(self.dtype), kernel_h.astype(self.dtype)
    bias = bias.astype(self.dtype)

    if self.use_bn:
      scale, betas, mean, var, count = self._bn_variables(steps)

    def bn(k, v, population):
      """BN `k` at one step: (output, batch moments) in training, population stats in eval."""
      if not self.use_bn:
        return v, None
      if train:
        return batch_norm.batch_normalize(
          v,
          scale[k],
          betas[k],
          axes=(0,),
          epsilon=self.epsilon,
          axis_name=self.axis_name,
          dtype=self.dtype,
        )
      return batch_norm.normalize(
        v, *population[k], scale[k], betas[k], axes=(0,), epsilon=self.epsilon, dtype=self.dtype
      ), None

    def step(carry, inputs):
      h, c = carry
      x_t, population = inputs
      wx, mom_x = bn("x", x_t @ kernel_x, population)
      wh, mom_h = bn("h", h @ kernel_h, population)
      i, f, g, o = jnp.split(wx + wh + bias, 4, axis=-1)
      c = nn.sigmoid(f) * c + nn.sigmoid(i) * act(g)
      c_hat, mom_c = bn("c", c, population)
      h = nn.sigmoid(o) * act(c_hat)
      return (h, c), {"x": mom_x, "h": mom_h, "c": mom_c}

    # Step t reads row t of each population array (eval) and returns its batch moments (train).
    population = (
      {k: (mean[k].value, var[k].value) for k in BNS} if self.use_bn and not train else None
    )
    zeros = jnp.zeros((batch, n), self.dtype)
    (h, _), moments = lax.scan(step, (zeros, zeros), (xs, population))

    if (
      self.use_bn
      and train
      and not self.is_initializing()
      and self.is_mutable_collection("batch_stats")
    ):
      self._update_population(moments, mean, var, count)
    logits = nn.Dense(
      self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="logits"
    )(h)
    return logits.astype(jnp.float32)

  def _bn_variables(self, steps: int):
    """The three BNs' gamma, beta (None where a BN has none) and population statistics.

    Statistics have shape (steps, features); `count` is the shared update counter.
    """
    n = self.hidden
    gamma_init = nn.initializers.constant(self.bn_scale_init)
    scale = {k: self.param(f"scale_{k}", gamma_init, (w * n,)) for k, w in BNS.items()}
    bias_c = self.param("bias_c", nn.initializers.zeros, (n,))
    mean = {
      k: self.variable("batch_stats", f"mean_{k}", jnp.zeros, (steps, w * n))
      for k, w in BNS.items()
    }
    var = {
      k: self.variable("batch_stats", f"var_{k}", jnp.ones, (steps, w * n)) for k, w in BNS.items()
    }
    count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
    return scale, {"x": None, "h": None, "c": bias_c}, mean, var, count

  def _update_population(self, moments, mean, var, count) -> None:
    """Folds one training batch's per-step moments into the population statistics."""
    for k in BNS:
      mom = moments[k]  # mean, var: (T, features); count: (T,), the same m at every step
      mean[k].value, var[k].value = batch_norm.update_population(
        mean[k].value,
        var[k].value,
        count.value.astype(jnp.float32),
        batch_norm.Moments(mom.mean, mom.var, mom.count[:, None]),
        mode=self.population,
        decay=self.decay,
        unbiased=self.unbiased,
      )
    count.value = count.value + 1
