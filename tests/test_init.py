"""Weight initializers (bn_repro/models/common.py) equal flax's, bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn_repro.models import common

SHAPES = [(784, 100), (100, 10), (1, 1, 24, 8), (7, 7, 1, 24), (3, 3, 16, 32), (5, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("std", [1.0, 2**0.5, 0.01])
def test_gaussian_init_is_flax_bit_for_bit(shape, std):
  key = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(
    common.gaussian_init(std, True)(key, shape, jnp.float32),
    nn.initializers.variance_scaling(std**2, "fan_in", "normal")(key, shape, jnp.float32),
  )
  np.testing.assert_array_equal(
    common.gaussian_init(std, False)(key, shape, jnp.float32),
    nn.initializers.normal(std)(key, shape, jnp.float32),
  )


def test_gaussian_init_statistics_and_shape_checks():
  w = np.asarray(common.gaussian_init(2**0.5, True)(jax.random.PRNGKey(0), (3, 3, 64, 256)))
  assert w.shape == (3, 3, 64, 256)
  np.testing.assert_allclose(w.std(), (2 / (3 * 3 * 64)) ** 0.5, rtol=0.01)
  assert abs(w.mean()) < 0.01 * w.std()
  with pytest.raises(ValueError, match="at least 2 axes"):
    common.gaussian_init(1.0, True)(jax.random.PRNGKey(0), (10,))
