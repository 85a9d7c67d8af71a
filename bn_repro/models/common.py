"""Pieces shared by all models: nonlinearities and weight initializers."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NONLINEARITIES = {
  "sigmoid": nn.sigmoid,
  "relu": nn.relu,
  "tanh": jnp.tanh,
  "identity": lambda x: x,
}


def gaussian_init(std: float, fan_in_scaled: bool):
  """N(0, std^2), or N(0, std^2 / fan_in) when `fan_in_scaled` (std=1: LeCun normal).

  The same values, bit for bit, as `nn.initializers.normal(std)` and
  `nn.initializers.variance_scaling(std**2, "fan_in", "normal")` (fan_in: the product of
  all but the last axis), drawn as a flat vector and reshaped. Why: XLA:CPU takes seconds
  to compile the random-number generator for some 4-D kernel shapes (jax 0.10.2:
  `jax.random.normal(key, (3, 3, 8, 12))` 14.6 s, the same 864 numbers drawn flat 0.3 s),
  and initialization runs op by op, compiling one generator per distinct kernel shape.
  Threefry's bits depend only on an element's flat index, so reshaping changes no value.
  """

  def init(key, shape, dtype=jnp.float32):
    shape = tuple(shape)
    # The barrier keeps the scaling below out of the generator's fusion under jax.jit, so
    # that a jitted init draws the same values, bit for bit, as one run op by op.
    z = jax.lax.optimization_barrier(jax.random.normal(key, (math.prod(shape),), dtype))
    z = z.reshape(shape)
    if fan_in_scaled:
      if len(shape) < 2:
        raise ValueError(f"a fan-in scaled kernel needs at least 2 axes, got shape {shape}")
      return z * jnp.sqrt(jnp.array(std**2 / math.prod(shape[:-1]), dtype=dtype))
    return z * jnp.array(std, dtype)

  return init


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
