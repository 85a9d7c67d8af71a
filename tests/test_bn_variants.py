"""BN variants: each equals plain BN with its knob at the neutral value, and does what
its paper says otherwise (NumPy references); the ICS probe; BN placement and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import assert_trees_close, make_trainer, synthetic, tiny_config

import bn_repro
import bn_repro.training
from bn_repro import analysis, bn_variants, parallel, validation
from bn_repro.errors import UserError
from bn_repro.models.mlp import MLP

EPS = 1e-5


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def np_bn(x, eps=EPS):
  """Per-feature normalization over axis 0 in float64, and the batch mean and variance."""
  x = x.astype(np.float64)
  mu, var = x.mean(0), x.var(0)
  return (x - mu) / np.sqrt(var + eps), mu, var


def init(x):
  """Parameters and population statistics away from their defaults, for a (batch, n) input."""
  n = x.shape[-1]
  params = {
    "scale": np.linspace(0.5, 2.0, n, dtype=np.float32),
    "bias": np.linspace(-1.0, 1.0, n, dtype=np.float32),
  }
  stats = {
    "mean": np.linspace(-0.3, 0.3, n, dtype=np.float32),
    "var": np.linspace(0.5, 3.0, n, dtype=np.float32),
    "count": np.array(0, np.int32),
  }
  return {"params": params, "batch_stats": stats}


def train_out(layer, variables, x, dy, **kw):
  """Training-mode output, new batch_stats, and the gradients of sum(y * dy)."""

  def loss(params, x):
    y, upd = layer.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      use_running_average=False,
      mutable=["batch_stats"],
      **kw,
    )
    return jnp.sum(y * dy), (y, upd["batch_stats"])

  (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    variables["params"], x
  )
  return y, stats, grads


def assert_same_training(a, b, x, dy, kw_a=None, kw_b=None, rtol=1e-5):
  va, vb = init(x), init(x)
  ya, sa, ga = train_out(a, va, x, dy, **(kw_a or {}))
  yb, sb, gb = train_out(b, vb, x, dy, **(kw_b or {}))
  np.testing.assert_allclose(ya, yb, rtol=rtol, atol=1e-5)
  assert_trees_close(sa, sb, rtol=rtol, atol=1e-6)
  assert_trees_close(ga, gb, rtol=1e-4, atol=1e-5)


# --- Ghost batches -------------------------------------------------------------------


def test_ghost_batch_of_the_whole_batch_is_plain_bn(rng):
  x = rng.normal(1.0, 2.0, (16, 5)).astype(np.float32)
  dy = rng.normal(size=(16, 5)).astype(np.float32)
  assert_same_training(bn_repro.BatchNorm(virtual_batch_size=16), bn_repro.BatchNorm(), x, dy)


def test_ghost_batches_normalize_each_sub_batch_by_itself(rng):
  x = rng.normal(1.0, 2.0, (12, 3)).astype(np.float32)
  x[4:8] += 10.0  # the second ghost batch has a very different mean
  layer = bn_repro.BatchNorm(virtual_batch_size=4, use_scale=False, use_bias=False, decay=0.5)
  v = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  y, upd = layer.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  parts = [np_bn(x[i : i + 4]) for i in range(0, 12, 4)]
  np.testing.assert_allclose(y, np.concatenate([p[0] for p in parts]), rtol=1e-4, atol=1e-4)
  # The population sees the average of the ghost statistics.
  mean = np.mean([p[1] for p in parts], 0)
  var = np.mean([p[2] for p in parts], 0)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.5 * mean, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.5 + 0.5 * var, rtol=1e-5)


@pytest.mark.slow
def test_ghost_batches_do_not_depend_on_the_device_count():
  """Ghost batches of 4 from a global batch of 32: 1 device and 8 devices give the same run."""
  config = tiny_config(**{"bn.virtual_batch_size": 4, "batch_size": 32})
  states = []
  for n in (1, 8):
    trainer = make_trainer(config, n)
    state = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
    state, _, _ = trainer.train(state, 0, 3)
    states.append(parallel.unreplicate(state))
  assert_trees_close(states[0].params, states[1].params, rtol=1e-5, atol=1e-6)
  assert_trees_close(states[0].batch_stats, states[1].batch_stats, rtol=1e-5, atol=1e-6)
  # ... and differ from plain BN over the global batch.
  trainer = make_trainer(tiny_config(batch_size=32), 1)
  plain = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
  plain = parallel.unreplicate(trainer.train(plain, 0, 3)[0])
  assert not np.allclose(plain.params["dense0"]["kernel"], states[0].params["dense0"]["kernel"])


# --- Batch Renormalization -----------------------------------------------------------


def test_renorm_with_limits_1_and_0_is_plain_bn(rng):
  x = rng.normal(1.0, 2.0, (16, 5)).astype(np.float32)
  dy = rng.normal(size=(16, 5)).astype(np.float32)
  neutral = bn_repro.BatchNorm(renorm=True, renorm_rmax=1.0, renorm_dmax=0.0)
  assert_same_training(neutral, bn_repro.BatchNorm(), x, dy)
  # Before the warm-up starts the limits are (1, 0) whatever their final values.
  warming = bn_repro.BatchNorm(renorm=True, renorm_start=10)
  assert_same_training(warming, bn_repro.BatchNorm(), x, dy)


def test_renorm_matches_numpy_with_r_and_d_constant_in_backprop(rng):
  x = rng.normal(1.0, 2.0, (16, 4)).astype(np.float32)
  dy = rng.normal(size=(16, 4)).astype(np.float32)
  rmax, dmax = 1.5, 0.4
  layer = bn_repro.BatchNorm(
    renorm=True,
    renorm_rmax=rmax,
    renorm_dmax=dmax,
    renorm_start=0,
    renorm_rmax_end=0,
    renorm_dmax_end=0,
  )
  v = init(x)
  y, _, (gparams, gx) = train_out(layer, v, x, dy)
  p, s = v["params"], v["batch_stats"]
  xhat, mu_b, var_b = np_bn(x)
  sigma = np.sqrt(s["var"].astype(np.float64) + EPS)
  r = np.clip(np.sqrt(var_b + EPS) / sigma, 1 / rmax, rmax)
  d = np.clip((mu_b - s["mean"]) / sigma, -dmax, dmax)
  assert np.any(r == rmax) and np.any(np.abs(d) == dmax)  # the clipping is exercised
  want = p["scale"] * (xhat * r + d) + p["bias"]
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
  # Ioffe (2017), Sec. 3: with r and d treated as constants, dL/dgamma = sum(dy * (xhat r + d))
  # and dx is the BN backward with gamma * r in place of gamma.
  np.testing.assert_allclose(gparams["scale"], np.sum(dy * (xhat * r + d), 0), rtol=1e-4)
  np.testing.assert_allclose(gparams["bias"], dy.sum(0), rtol=1e-5)
  g = dy * p["scale"] * r
  want_dx = (g - g.mean(0) - xhat * (g * xhat).mean(0)) / np.sqrt(var_b + EPS)
  np.testing.assert_allclose(gx, want_dx, rtol=1e-3, atol=1e-5)


def test_renorm_limits_follow_the_warmup_schedule():
  steps = jnp.array([0, 5000, 10000, 25000, 40000, 90000])
  rmax, dmax = bn_variants.renorm_limits(steps, 3.0, 5.0, 5000, 35000, 20000)
  np.testing.assert_allclose(rmax, [1, 1, 1 + 2 * 5 / 35, 1 + 2 * 20 / 35, 3, 3], rtol=1e-6)
  np.testing.assert_allclose(dmax, [0, 0, 5 * 5 / 20, 5, 5, 5], rtol=1e-6)


# --- Noise -----------------------------------------------------------------------------


def test_noise_at_neutral_values_is_plain_bn(rng):
  x = rng.normal(1.0, 2.0, (16, 5)).astype(np.float32)
  dy = rng.normal(size=(16, 5)).astype(np.float32)
  neutral = bn_repro.BatchNorm(noise_mean=0.0, noise_scale=1.0, noise_std=0.0)
  assert_same_training(neutral, bn_repro.BatchNorm(), x, dy)


def test_noise_has_nonzero_mean_and_nonunit_variance_and_only_in_training(rng):
  x = rng.normal(size=(4096, 3)).astype(np.float32)
  layer = bn_repro.BatchNorm(
    noise_mean=2.0, noise_scale=3.0, noise_std=0.5, use_scale=False, use_bias=False
  )
  v = layer.init(jax.random.PRNGKey(0), x, use_running_average=True)
  draw = lambda k: layer.apply(
    v, x, use_running_average=False, mutable=["batch_stats"], rngs={"noise": jax.random.PRNGKey(k)}
  )[0]
  y1, y2 = np.asarray(draw(1)), np.asarray(draw(2))
  assert np.max(np.abs(y1.mean(0))) > 0.1 and np.max(np.abs(y1.std(0) - 1)) > 0.1
  assert not np.allclose(y1, y2)  # redrawn with the key (every step)
  np.testing.assert_array_equal(y1, np.asarray(draw(1)))  # a pure function of the key
  # y = s * xhat + n with s ~ N(v, std^2), n ~ N(mu, std^2): given xhat, E[y] = v xhat + mu
  # per feature, so regressing y on xhat recovers v in [1, 3] and mu in [-2, 2].
  xhat = np_bn(x)[0]
  for j in range(3):
    slope, icept = np.polyfit(xhat[:, j], y1[:, j], 1)
    assert 1 - 0.1 < slope < 3 + 0.1 and -2 - 0.1 < icept < 2 + 0.1
  y_eval = layer.apply(v, x, use_running_average=True)
  np.testing.assert_allclose(y_eval, x / np.sqrt(1 + EPS), rtol=1e-5)


# --- Frozen statistics ---------------------------------------------------------------


def test_freeze_step_in_the_future_is_plain_bn(rng):
  x = rng.normal(1.0, 2.0, (16, 5)).astype(np.float32)
  dy = rng.normal(size=(16, 5)).astype(np.float32)
  assert_same_training(bn_repro.BatchNorm(freeze_step=1000), bn_repro.BatchNorm(), x, dy)


def test_frozen_bn_trains_with_the_population_statistics(rng):
  x = rng.normal(1.0, 2.0, (16, 4)).astype(np.float32)
  dy = rng.normal(size=(16, 4)).astype(np.float32)
  layer = bn_repro.BatchNorm(freeze_step=3)
  v = init(x)
  v["batch_stats"]["count"] = np.array(3, np.int32)
  y, stats, (gparams, gx) = train_out(layer, v, x, dy)
  y_eval = layer.apply(v, x, use_running_average=True)
  np.testing.assert_allclose(y, y_eval, rtol=1e-6)
  np.testing.assert_array_equal(stats["mean"], v["batch_stats"]["mean"])
  np.testing.assert_array_equal(stats["var"], v["batch_stats"]["var"])
  assert int(stats["count"]) == 4
  # A fixed affine map: dx = dy * gamma / sqrt(var + eps), with no batch terms.
  want = dy * v["params"]["scale"] / np.sqrt(v["batch_stats"]["var"] + EPS)
  np.testing.assert_allclose(gx, want, rtol=1e-5)
  # One update earlier the layer still uses (and updates) batch statistics.
  v["batch_stats"]["count"] = np.array(2, np.int32)
  y2, stats2, _ = train_out(layer, v, x, dy)
  assert not np.allclose(y2, y_eval)
  assert not np.allclose(stats2["mean"], v["batch_stats"]["mean"])


# --- Validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"bn.virtual_batch_size": 5}, "config.bn.virtual_batch_size"),
    ({"bn.renorm": True, "bn.population": "average"}, "config.bn.population"),
    ({"bn.freeze_step": 10, "bn.population": "average"}, "config.bn.population"),
    ({"bn.renorm": True, "bn.virtual_batch_size": 4}, "config.bn.renorm"),
    ({"bn.renorm_rmax": 0.5}, "config.bn.renorm_rmax"),
    ({"bn.noise_scale": 0.5}, "config.bn.noise_scale"),
    ({"model.bn_position": "middle"}, "config.model.bn_position"),
    ({"model.dropout_rate": 1.0}, "config.model.dropout_rate"),
  ],
)
def test_bad_variant_settings_name_the_field(overrides, field):
  config = tiny_config(**overrides)
  with pytest.raises(UserError) as e:
    validation.validate(config)
    validation.validate_devices(config, 2)
  assert e.value.field == field


# --- Placement and dropout ---------------------------------------------------------------


def _mlp_variables(model, x):
  return model.init(jax.random.PRNGKey(0), x, train=False)


@pytest.mark.slow
def test_bn_after_a_linear_nonlinearity_equals_bn_before_it(rng):
  """With g = identity, BN(g(Wu + b)) = g(BN(Wu)): the dense bias cancels in BN."""
  x = rng.uniform(size=(32, 28, 28, 1)).astype(np.float32)
  kw = dict(hidden=(8, 6), nonlinearity="identity", norm=bn_repro.BatchNorm)
  before, after = MLP(bn_position="wu", **kw), MLP(bn_position="after_act", **kw)
  vb = _mlp_variables(before, x)
  va = _mlp_variables(after, x)
  # Same kernels; the "after" net's dense biases set to arbitrary values.
  params = jax.tree.map(lambda p: p, va["params"])
  for i in range(2):
    params[f"dense{i}"] = {
      "kernel": vb["params"][f"dense{i}"]["kernel"],
      "bias": np.full(params[f"dense{i}"]["bias"].shape, 3.0, np.float32),
    }
  params["logits"] = vb["params"]["logits"]
  yb, _ = before.apply(vb, x, train=True, mutable=["batch_stats"])
  ya, _ = after.apply(
    {"params": params, "batch_stats": va["batch_stats"]}, x, train=True, mutable=["batch_stats"]
  )
  np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
  # With a real nonlinearity the two placements differ.
  kw["nonlinearity"] = "sigmoid"
  ys = [
    m.apply(_mlp_variables(m, x), x, train=True, mutable=["batch_stats"])[0]
    for m in (MLP(bn_position="wu", **kw), MLP(bn_position="after_act", **kw))
  ]
  assert not np.allclose(ys[0], ys[1], atol=1e-3)


def test_bn_of_the_layer_input_normalizes_u(rng):
  x = rng.uniform(size=(32, 4, 4, 1)).astype(np.float32)
  model = MLP(hidden=(5,), nonlinearity="relu", norm=bn_repro.BatchNorm, bn_position="u")
  v = _mlp_variables(model, x)
  assert v["batch_stats"]["bn0"]["mean"].shape == (16,)  # statistics of the 16 pixels
  _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(
    upd["batch_stats"]["bn0"]["mean"], 0.01 * x.reshape(32, 16).mean(0), rtol=1e-5
  )


def test_mlp_dropout_only_in_training(rng):
  x = rng.uniform(size=(8, 4, 4, 1)).astype(np.float32)
  model = MLP(hidden=(32,), dropout_rate=0.5)
  v = _mlp_variables(model, x)
  np.testing.assert_array_equal(model.apply(v, x), model.apply(v, x))
  y1 = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  y2 = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(y1, y2)


# --- Train-set evaluation and the ICS probe ---------------------------------------------


def test_train_eval_equals_eval_on_the_same_examples():
  config = tiny_config(eval_train_examples=24)
  ds = synthetic(64, 0)
  first = bn_repro.data.ArrayDataset(ds.images[:24], ds.labels[:24])
  trainer = bn_repro.training.Trainer(config, ds, first, parallel.devices(2))
  state = parallel.replicate(trainer.init_state(ds.images[:2]), trainer.devs)
  state, _, _ = trainer.train(state, 0, 3)
  out = trainer.evaluate(state)
  for k in ("accuracy", "loss", "top5"):
    np.testing.assert_allclose(out[f"train_eval/{k}"], out[f"eval/{k}"], rtol=1e-6)


def test_gradient_shift_matches_the_closed_form_of_a_two_layer_linear_model():
  """L = (w2 w1 x - y)^2 / 2: G_w2 = e w1 x with e = w2 w1 x - y; after w1 moves by its own
  step, G'_w2 = e' w1' x. The first layer has no earlier layer: no shift."""
  x, y, w1, w2, lr = 1.5, 0.5, 0.8, -1.2, 0.3
  params = {"l1": {"kernel": jnp.array(w1)}, "l2": {"kernel": jnp.array(w2)}}
  loss = lambda p: 0.5 * (p["l2"]["kernel"] * p["l1"]["kernel"] * x - y) ** 2
  out = analysis.gradient_shift(loss, params, lr, ["l1", "l2"], ["l1", "l2"])
  e = w2 * w1 * x - y
  g_w1, g_w2 = e * w2 * x, e * w1 * x
  w1m = w1 - lr * g_w1
  g2 = (w2 * w1m * x - y) * w1m * x
  np.testing.assert_allclose(out["ics/l2/l2"], abs(g2 - g_w2), rtol=1e-5)
  np.testing.assert_allclose(out["ics/l2/rel"], abs(g2 - g_w2) / abs(g_w2), rtol=1e-5)
  np.testing.assert_allclose(out["ics/l2/cos"], np.sign(g2 * g_w2), rtol=1e-6)
  assert float(out["ics/l1/l2"]) == 0.0 and float(out["ics/l1/cos"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_ics_probe_in_the_trainer_uses_forward_order():
  config = tiny_config(ics_probe=True)
  trainer = make_trainer(config, 2)
  state = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
  state, _, _ = trainer.train(state, 0, 2)
  out = trainer.evaluate(state)
  assert out["ics/dense0/l2"] == 0.0  # nothing below the first layer
  assert out["ics/dense1/l2"] > 0 and out["ics/logits/l2"] > 0
  assert set(k.split("/")[1] for k in out if k.startswith("ics/")) == {"dense0", "dense1", "logits"}


def test_variants_on_feature_maps_match_numpy(rng):
  """NHWC (per feature map over batch and space): ghost batches of 2 and renormalization."""
  x = rng.normal(1.0, 2.0, (6, 3, 3, 2)).astype(np.float32)
  layer = bn_repro.BatchNorm(virtual_batch_size=2, use_scale=False, use_bias=False)
  v = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  y, _ = layer.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  for i in range(0, 6, 2):
    g = x[i : i + 2].astype(np.float64)
    want = (g - g.mean((0, 1, 2))) / np.sqrt(g.var((0, 1, 2)) + EPS)
    np.testing.assert_allclose(y[i : i + 2], want, rtol=1e-4, atol=1e-4)
  layer = bn_repro.BatchNorm(
    renorm=True,
    renorm_rmax=1.2,
    renorm_dmax=0.1,
    renorm_start=0,
    renorm_rmax_end=0,
    renorm_dmax_end=0,
    use_scale=False,
    use_bias=False,
  )
  stats = {
    "mean": np.zeros(2, np.float32),
    "var": np.ones(2, np.float32),
    "count": np.array(0, np.int32),
  }
  y, _ = layer.apply({"batch_stats": stats}, x, use_running_average=False, mutable=["batch_stats"])
  x64 = x.astype(np.float64)
  mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  r = np.clip(np.sqrt(var + EPS) / np.sqrt(1 + EPS), 1 / 1.2, 1.2)
  d = np.clip(mu / np.sqrt(1 + EPS), -0.1, 0.1)
  np.testing.assert_allclose(y, (x64 - mu) / np.sqrt(var + EPS) * r + d, rtol=1e-4, atol=1e-4)
