"""The BN transform against NumPy, the paper's closed forms, and flax.linen.BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn_repro
from bn_repro import batch_norm as bn

EPS = 1e-5


def np_bn(x, axes, gamma, beta, eps):
  """Algorithm 1 in NumPy (float64): biased variance, eps inside the sqrt."""
  x = x.astype(np.float64)
  mu = x.mean(axes, keepdims=True)
  var = ((x - mu) ** 2).mean(axes, keepdims=True)
  return gamma * (x - mu) / np.sqrt(var + eps) + beta, mu.squeeze(axes), var.squeeze(axes)


def np_bn_backward(x, gamma, dy, eps):
  """The paper's Sec. 3 backprop formulas for one dense BN layer, batch on axis 0."""
  x, dy = x.astype(np.float64), dy.astype(np.float64)
  m = x.shape[0]
  mu = x.mean(0)
  var = ((x - mu) ** 2).mean(0)
  xhat = (x - mu) / np.sqrt(var + eps)
  dxhat = dy * gamma
  dvar = np.sum(dxhat * (x - mu), 0) * -0.5 * (var + eps) ** -1.5
  dmu = np.sum(-dxhat / np.sqrt(var + eps), 0) + dvar * np.sum(-2 * (x - mu), 0) / m
  dx = dxhat / np.sqrt(var + eps) + dvar * 2 * (x - mu) / m + dmu / m
  return dx, np.sum(dy * xhat, 0), np.sum(dy, 0)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.mark.parametrize("shape,axes", [((32, 7), (0,)), ((4, 5, 6, 3), (0, 1, 2))])
def test_algorithm1_matches_numpy(rng, shape, axes):
  x = rng.normal(2.0, 3.0, shape).astype(np.float32)
  nf = shape[-1]
  gamma, beta = rng.normal(size=nf), rng.normal(size=nf)
  want, mu, var = np_bn(x, axes, gamma, beta, EPS)
  mom = bn.moments(jnp.asarray(x), axes)
  np.testing.assert_allclose(mom.mean, mu, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mom.var, var, rtol=1e-5)
  assert float(mom.count) == np.prod([shape[a] for a in axes])
  got = bn.normalize(
    jnp.asarray(x),
    mom.mean,
    mom.var,
    jnp.asarray(gamma, jnp.float32),
    jnp.asarray(beta, jnp.float32),
    axes=axes,
    epsilon=EPS,
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_per_feature_map_statistics_nhwc(rng):
  """Conv BN: one statistic per channel over batch and space (m' = m * p * q)."""
  x = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
  x[..., 1] = x[..., 1] * 10 + 7
  layer = bn_repro.BatchNorm()
  variables = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  assert variables["params"]["scale"].shape == (2,)
  y, _ = layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  y = np.asarray(y)
  for c in range(2):
    assert abs(y[..., c].mean()) < 1e-5
    np.testing.assert_allclose(y[..., c].var(), 1.0, rtol=1e-3)
  # A per-position (wrong) reduction would leave each pixel's mean at zero too, but not its
  # variance at 1 across the batch only: check the map is shared over space.
  assert not np.allclose(y[:, 0, 0, 1].var(), 1.0, rtol=1e-3)


def _autodiff_bn(x, gamma, beta):
  mom = bn.moments(x, (0,))
  return bn.normalize(x, mom.mean, mom.var, gamma, beta, axes=(0,), epsilon=EPS)


def _closed_form_bn(x, gamma, beta):
  return bn.batch_normalize(x, gamma, beta, axes=(0,), epsilon=EPS)[0]


@pytest.mark.parametrize("bn_fn", [_autodiff_bn, _closed_form_bn], ids=["autodiff", "custom_vjp"])
def test_grad_matches_papers_closed_form(rng, bn_fn):
  m, n = 16, 5
  x = rng.normal(1.0, 2.0, (m, n)).astype(np.float32)
  gamma = rng.normal(size=n).astype(np.float32)
  beta = rng.normal(size=n).astype(np.float32)
  dy = rng.normal(size=(m, n)).astype(np.float32)

  def f(x, gamma, beta):
    return jnp.sum(bn_fn(x, gamma, beta) * dy)

  dx, dgamma, dbeta = jax.grad(f, argnums=(0, 1, 2))(x, gamma, beta)
  want_dx, want_dgamma, want_dbeta = np_bn_backward(x, gamma, dy, EPS)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-5, atol=1e-5)


def test_scale_invariance_identities_sec_3_3(rng):
  """BN(Wu) = BN((aW)u); d/du equal; d/d(aW) = (1/a) d/dW (eps = 0 makes them exact)."""
  u = rng.normal(size=(20, 6)).astype(np.float32)
  w = rng.normal(size=(6, 4)).astype(np.float32)
  dy = rng.normal(size=(20, 4)).astype(np.float32)
  a = 7.5

  def f(w, u):
    x = u @ w
    mom = bn.moments(x, (0,))
    return bn.normalize(x, mom.mean, mom.var, axes=(0,), epsilon=0.0)

  loss = lambda w, u: jnp.sum(f(w, u) * dy)
  np.testing.assert_allclose(f(a * w, u), f(w, u), rtol=1e-4, atol=1e-5)
  gw1, gu1 = jax.grad(loss, argnums=(0, 1))(w, u)
  gwa, gua = jax.grad(loss, argnums=(0, 1))(a * w, u)
  np.testing.assert_allclose(gua, gu1, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(gwa, gw1 / a, rtol=1e-3, atol=1e-5)
  assert not np.allclose(gwa, gw1, rtol=1e-2)  # the 1/a is really there


def _train_apply(layer, variables, x, **kw):
  return layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"], **kw)


def test_ema_update_matches_numpy(rng):
  decay = 0.9
  layer = bn_repro.BatchNorm(decay=decay)
  x0 = rng.normal(size=(10, 3)).astype(np.float32)
  variables = layer.init(jax.random.PRNGKey(0), x0, use_running_average=False)
  stats = variables["batch_stats"]
  np.testing.assert_array_equal(stats["mean"], 0)
  np.testing.assert_array_equal(stats["var"], 1)
  want_mean, want_var = np.zeros(3), np.ones(3)
  for k in range(4):
    x = rng.normal(k, 1 + k, size=(10, 3)).astype(np.float32)
    _, upd = _train_apply(layer, {"params": variables["params"], "batch_stats": stats}, x)
    stats = upd["batch_stats"]
    want_mean = decay * want_mean + (1 - decay) * x.mean(0)
    want_var = decay * want_var + (1 - decay) * x.var(0)
  np.testing.assert_allclose(stats["mean"], want_mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], want_var, rtol=1e-5)
  assert int(stats["count"]) == 4
  assert stats["mean"].dtype == jnp.float32


@pytest.mark.parametrize("unbiased", [False, True])
def test_algorithm2_exact_average(rng, unbiased):
  """E[x] = E_B[mu_B]; Var[x] = m/(m-1) E_B[sigma2_B] (unbiased) or E_B[sigma2_B]."""
  m = 8
  layer = bn_repro.BatchNorm(population="average", unbiased=unbiased)
  batches = [rng.normal(3, 2, size=(m, 4)).astype(np.float32) for _ in range(5)]
  variables = layer.init(jax.random.PRNGKey(0), batches[0], use_running_average=False)
  stats = bn.reset_population(variables["batch_stats"])
  for x in batches:
    _, upd = _train_apply(layer, {"params": variables["params"], "batch_stats": stats}, x)
    stats = upd["batch_stats"]
  want_mean = np.mean([x.mean(0) for x in batches], 0)
  want_var = np.mean([x.var(0) for x in batches], 0) * (m / (m - 1) if unbiased else 1)
  np.testing.assert_allclose(stats["mean"], want_mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], want_var, rtol=1e-5)
  # Inference is then the fixed affine map of Algorithm 2, line 11.
  params = {"scale": np.full(4, 1.5, np.float32), "bias": np.full(4, -0.5, np.float32)}
  x = rng.normal(size=(3, 4)).astype(np.float32)
  y = layer.apply({"params": params, "batch_stats": stats}, x, use_running_average=True)
  want = 1.5 / np.sqrt(want_var + EPS) * x + (-0.5 - 1.5 * want_mean / np.sqrt(want_var + EPS))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 6)])
def test_equals_flax_batchnorm(rng, shape):
  """Where options coincide: outputs, updated running statistics, eval outputs."""
  ours = bn_repro.BatchNorm(decay=0.9, epsilon=1e-3)
  theirs = nn.BatchNorm(momentum=0.9, epsilon=1e-3, use_fast_variance=False)
  x = rng.normal(1, 2, size=shape).astype(np.float32)
  v_ours = ours.init(jax.random.PRNGKey(0), x, use_running_average=False)
  v_theirs = theirs.init(jax.random.PRNGKey(0), x, use_running_average=True)
  params = {
    "scale": rng.normal(size=shape[-1]).astype(np.float32),
    "bias": rng.normal(size=shape[-1]).astype(np.float32),
  }
  y1, s1 = _train_apply(ours, {"params": params, "batch_stats": v_ours["batch_stats"]}, x)
  y2, s2 = theirs.apply(
    {"params": params, "batch_stats": v_theirs["batch_stats"]},
    x,
    use_running_average=False,
    mutable=["batch_stats"],
  )
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  for k in ("mean", "var"):
    np.testing.assert_allclose(s1["batch_stats"][k], s2["batch_stats"][k], rtol=1e-6)
  x2 = rng.normal(size=shape).astype(np.float32)
  e1 = ours.apply(
    {"params": params, "batch_stats": s1["batch_stats"]}, x2, use_running_average=True
  )
  e2 = theirs.apply(
    {"params": params, "batch_stats": s2["batch_stats"]}, x2, use_running_average=True
  )
  np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)


def test_large_mean_small_std_variance_within_one_percent(rng):
  x = (1e3 + 0.1 * rng.normal(size=(256, 4))).astype(np.float32)
  want = x.astype(np.float64).var(0)
  mom = bn.moments(jnp.asarray(x), (0,))
  np.testing.assert_allclose(mom.var, want, rtol=1e-2)
  # The E[x^2] - E[x]^2 shortcut (flax's default) is far off on the same input.
  fast = nn.BatchNorm(use_running_average=False)
  v = fast.init(jax.random.PRNGKey(0), x)
  _, s = fast.apply(v, x, mutable=["batch_stats"])
  fast_var = (np.asarray(s["batch_stats"]["var"]) - 0.99 * 1.0) / 0.01
  assert not np.allclose(fast_var, want, rtol=1e-2)


@pytest.mark.parametrize("outlier", [0.0, 3.0, 50.0])
def test_variance_precise_whatever_the_first_example(rng, outlier):
  """The shift s of the one-pass sums is the batch's first example; even an outlier there
  (50 = 500 std) keeps the variance and mean at float32 precision, on 1 and 8 devices."""
  x = (1e3 + 0.1 * rng.normal(size=(256, 4))).astype(np.float32)
  x[0] += outlier
  x[8] -= outlier  # another device's first example, on 8 devices
  want = x.astype(np.float64)
  mom = bn.moments(jnp.asarray(x), (0,))
  np.testing.assert_allclose(mom.var, want.var(0), rtol=1e-4)
  np.testing.assert_allclose(mom.mean, want.mean(0), rtol=1e-6)
  per_device = jax.pmap(lambda v: bn.moments(v, (0,), axis_name="i"), axis_name="i")(
    x.reshape(8, 32, 4)
  )
  np.testing.assert_allclose(per_device.var[0], want.var(0), rtol=1e-4)
  np.testing.assert_allclose(per_device.mean[3], want.mean(0), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_statistics(rng):
  layer = bn_repro.BatchNorm(dtype=jnp.bfloat16)
  x = jnp.asarray(rng.normal(5, 2, size=(32, 8)), jnp.bfloat16)
  variables = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  y, upd = _train_apply(layer, variables, x)
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for k, v in upd["batch_stats"].items() if k != "count")
  mom = bn.moments(x, (0,))
  assert mom.mean.dtype == jnp.float32 and mom.var.dtype == jnp.float32
  np.testing.assert_allclose(mom.var, np.asarray(x, np.float64).var(0), rtol=1e-3)


def test_mask_equals_statistics_of_the_selected_rows(rng):
  x = rng.normal(size=(12, 3)).astype(np.float32)
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1], bool)
  mom = bn.moments(jnp.asarray(x), (0,), mask=keep[:, None])
  np.testing.assert_allclose(mom.mean, x[keep].mean(0), rtol=1e-5)
  np.testing.assert_allclose(mom.var, x[keep].var(0), rtol=1e-5)
  assert float(mom.count[0]) == keep.sum()
  layer = bn_repro.BatchNorm(use_scale=False, use_bias=False)
  variables = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  y, _ = _train_apply(layer, variables, x, mask=keep[:, None])
  np.testing.assert_allclose(
    np.asarray(y)[keep], np_bn(x[keep], (0,), 1, 0, EPS)[0], rtol=1e-4, atol=1e-4
  )


def test_eval_mode_leaves_statistics_untouched(rng):
  layer = bn_repro.BatchNorm()
  x = rng.normal(size=(8, 3)).astype(np.float32)
  variables = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  _, upd = _train_apply(layer, variables, x)
  stats = upd["batch_stats"]
  _, again = layer.apply(
    {"params": variables["params"], "batch_stats": stats},
    x,
    use_running_average=True,
    mutable=["batch_stats"],
  )
  for k in stats:
    np.testing.assert_array_equal(again["batch_stats"][k], stats[k])


def test_cross_device_statistics_equal_global_batch(rng):
  """pmap over 8 devices with axis_name: the statistics of the concatenated batch."""
  n = jax.local_device_count()
  assert n == 8
  x = rng.normal(3, 2, size=(n, 5, 4)).astype(np.float32)
  x[3] += 10  # make devices differ
  mom = jax.pmap(lambda v: bn.moments(v, (0,), axis_name="batch"), axis_name="batch")(x)
  flat = x.reshape(-1, 4)
  for d in range(n):
    np.testing.assert_allclose(mom.mean[d], flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(mom.var[d], flat.var(0), rtol=1e-4)
    assert float(mom.count[d]) == n * 5


def test_cross_device_masked_statistics_weight_by_count(rng):
  """Devices with different numbers of masked-in rows: weight by count, not per device."""
  n = jax.local_device_count()
  x = rng.normal(size=(n, 6, 2)).astype(np.float32)
  mask = np.zeros((n, 6, 1), np.float32)
  for d in range(n):
    mask[d, : d % 6 + 1] = 1
  mom = jax.pmap(lambda v, m: bn.moments(v, (0,), axis_name="batch", mask=m), axis_name="batch")(
    x, mask
  )
  sel = x[np.broadcast_to(mask, x.shape) > 0].reshape(-1, 2)
  np.testing.assert_allclose(mom.mean[0], sel.mean(0), rtol=1e-5)
  np.testing.assert_allclose(mom.var[0], sel.var(0), rtol=1e-4)


@pytest.mark.parametrize("mask", [False, True])
def test_batch_normalize_grads_equal_autodiff_nhwc_across_devices(rng, mask):
  """The closed-form backward (and the masked autodiff path) under pmap on 8 devices."""
  n = jax.local_device_count()
  x = rng.normal(2, 3, size=(n, 2, 3, 3, 4)).astype(np.float32)
  dy = rng.normal(size=x.shape).astype(np.float32)
  gamma = rng.normal(size=4).astype(np.float32)
  beta = rng.normal(size=4).astype(np.float32)
  m = np.ones((n, 2, 1, 1, 1), np.float32) if mask else None

  def loss(x, gamma, beta, dy, m):
    y, _ = bn.batch_normalize(
      x, gamma, beta, axes=(0, 1, 2), epsilon=EPS, axis_name="batch", mask=m
    )
    return jnp.sum(y * dy)

  grads = jax.pmap(jax.grad(loss, argnums=(0, 1, 2)), axis_name="batch")(
    x, gamma[None].repeat(n, 0), beta[None].repeat(n, 0), dy, m
  )

  def global_loss(x, gamma, beta):  # one device, the concatenated batch
    flat = x.reshape(-1, 3, 3, 4)
    return jnp.sum(_autodiff_nhwc(flat, gamma, beta) * dy.reshape(flat.shape))

  want = jax.grad(global_loss, argnums=(0, 1, 2))(x, gamma, beta)
  np.testing.assert_allclose(grads[0], want[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads[1].sum(0), want[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[2].sum(0), want[2], rtol=1e-4, atol=1e-4)


def _autodiff_nhwc(x, gamma, beta):
  mom = bn.moments(x, (0, 1, 2))
  return bn.normalize(x, mom.mean, mom.var, gamma, beta, axes=(0, 1, 2), epsilon=EPS)
