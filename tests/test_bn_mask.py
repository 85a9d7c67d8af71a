"""Masked BN: values outside the mask, whatever they are, reach no statistic, no output
inside the mask and no gradient; flax's own masked-batch case, on 1 and 8 devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn_repro
from bn_repro import batch_norm as bn

EPS = 1e-5
FILLS = [np.nan, np.inf, -np.inf, 1e30]
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")  # NumPy's var of 1e30


def flax_case(fill, devices=1):
  """flax's test_batch_norm with test_mask=True: x (4, 3, 2), mask (4, 3, 1), the values
  outside the mask set to `fill`; `devices` such batches side by side."""
  key1, key2 = jax.random.split(jax.random.key(0))
  x = np.asarray(jax.random.normal(key1, (devices * 4, 3, 2)))
  m = np.asarray(jax.random.randint(key2, (devices * 4, 3, 1), 0, 2)).astype(bool)
  m[:, 0] = True  # every batch of 4 keeps values of every feature
  return np.where(m, x, np.float32(fill)).astype(np.float32), m


def np_masked_bn_grads(x, m, gamma, dy):
  """The paper's backward over the values inside the mask, in float64 (0 outside)."""
  dx, dgamma, dbeta = np.zeros(x.shape), np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
  sel = np.broadcast_to(m, x.shape)
  for c in range(x.shape[-1]):
    keep = sel[..., c]
    xs, dys = x[..., c][keep].astype(np.float64), dy[..., c][keep].astype(np.float64)
    sigma = np.sqrt(xs.var() + EPS)
    xhat = (xs - xs.mean()) / sigma
    dx[..., c][keep] = gamma[c] / sigma * (dys - dys.mean() - xhat * np.mean(dys * xhat))
    dgamma[c], dbeta[c] = np.sum(dys * xhat), np.sum(dys)
  return dx, dgamma, dbeta


@pytest.mark.parametrize("fill", FILLS)
def test_flax_masked_batch_case(fill):
  """flax's assertions (normalized outputs inside the mask, EMA of the masked moments), the
  outputs inside the mask equal flax.linen.BatchNorm's, and nothing is NaN inside."""
  x, m = flax_case(fill)
  layer = bn_repro.BatchNorm(decay=0.9, use_running_average=False)
  variables = layer.init(jax.random.key(1), x, mask=m)
  y, upd = layer.apply(variables, x, mask=m, mutable=["batch_stats"])
  y, stats = np.asarray(y), upd["batch_stats"]
  sel = np.broadcast_to(m, x.shape)
  assert np.isfinite(y[sel]).all()
  np.testing.assert_allclose(y.mean((0, 1), where=sel), [0.0, 0.0], atol=1e-4)
  np.testing.assert_allclose(y.var((0, 1), where=sel), [1.0, 1.0], rtol=1e-4)
  np.testing.assert_allclose(stats["mean"], 0.1 * x.mean((0, 1), where=sel), atol=1e-4)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var((0, 1), where=sel), rtol=1e-4)

  ref = nn.BatchNorm(momentum=0.9, use_running_average=False, use_fast_variance=False)
  ref_y, ref_upd = ref.apply(ref.init(jax.random.key(1), x, mask=m), x, mask=m, mutable=True)
  np.testing.assert_allclose(y[sel], np.asarray(ref_y)[sel], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["var"], ref_upd["batch_stats"]["var"], rtol=1e-5)


def masked_loss(x, gamma, beta, dy, m, axis_name=None):
  y, mom = bn.batch_normalize(x, gamma, beta, axes=(0, 1), epsilon=EPS, axis_name=axis_name, mask=m)
  return jnp.sum(jnp.where(m, y * dy, 0.0)), (y, mom)


GRAD = jax.value_and_grad(masked_loss, argnums=(0, 1, 2), has_aux=True)
GRAD_1 = jax.jit(GRAD)
GRAD_8 = jax.pmap(
  lambda *a: GRAD(*a, axis_name="batch"), axis_name="batch", in_axes=(0, None, None, 0, 0)
)


@pytest.mark.parametrize("fill", FILLS)
def test_masked_values_reach_no_gradient_on_1_and_8_devices(fill):
  """Statistics, outputs inside the mask and the gradients (x, scale, bias) on 8 devices
  equal one device's on the concatenated batch and NumPy's backward over the masked-in
  values; the gradient is 0 outside the mask."""
  n = jax.local_device_count()
  assert n == 8
  x, m = flax_case(fill, devices=n)
  rng = np.random.default_rng(0)
  dy = rng.normal(size=x.shape).astype(np.float32)
  gamma = np.asarray([1.5, -0.5], np.float32)
  beta = np.asarray([0.2, 0.3], np.float32)
  (_, (y1, mom1)), g1 = GRAD_1(x, gamma, beta, dy, m)
  per_device = lambda a: a.reshape(n, -1, *a.shape[1:])
  (_, (y8, mom8)), g8 = GRAD_8(per_device(x), gamma, beta, per_device(dy), per_device(m))

  sel = np.broadcast_to(m, x.shape)
  want_dx, want_dgamma, want_dbeta = np_masked_bn_grads(x, m, gamma, dy)
  for y, mom, (dx, dgamma, dbeta) in (
    (y1, mom1, g1),
    (np.asarray(y8).reshape(x.shape), jax.tree.map(lambda a: a[0], mom8), g8),
  ):
    np.testing.assert_allclose(mom.mean, x.mean((0, 1), where=sel), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mom.var, x.var((0, 1), where=sel), rtol=1e-5)
    np.testing.assert_array_equal(mom.count, sel.sum((0, 1)))
    np.testing.assert_allclose(np.asarray(y)[sel], np.asarray(y1)[sel], rtol=1e-5, atol=1e-6)
    dx = np.asarray(dx).reshape(x.shape)
    assert np.isfinite(dx).all() and (dx[~sel] == 0).all()
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dgamma).reshape(-1, 2).sum(0), want_dgamma, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dbeta).reshape(-1, 2).sum(0), want_dbeta, rtol=1e-4)
  assert np.isfinite(np.asarray(y1)[sel]).all()


def test_outputs_outside_the_mask_are_the_same_affine_map():
  """Outside the mask the output is the layer's map of the value (as flax's), with the
  masked statistics; finite values there come out finite."""
  x, m = flax_case(0.0)
  x = np.where(m, x, np.float32(7.0))
  gamma, beta = np.asarray([2.0, 1.0], np.float32), np.asarray([0.5, 0.0], np.float32)
  y, mom = bn.batch_normalize(x, gamma, beta, axes=(0, 1), epsilon=EPS, mask=m)
  want = bn.normalize(x, mom.mean, mom.var, gamma, beta, axes=(0, 1), epsilon=EPS)
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
