"""Pieces shared by all models: nonlinearities and weight initializers."""

import flax.linen as nn
import jax.numpy as jnp

NONLINEARITIES = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


def gaussian_init(std: float, fan_in_scaled: bool):
  """N(0, std^2), or N(0, std^2 / fan_in) when `fan_in_scaled` (std=1: LeCun normal)."""
  if fan_in_scaled:
    return nn.initializers.variance_scaling(std**2, "fan_in", "normal")
  return nn.initializers.normal(std)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
