"""The training step and chunk: BN statistics across devices, eval invariances, its effects."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn_repro import data, models, parallel, training
from bn_repro.configs import mnist_mlp


def tiny_config(**overrides):
  c = mnist_mlp.get_config("bn_sigmoid")
  c.model.hidden = (16, 16)
  c.model.probe_unit = 3
  c.batch_size = 16
  c.eval_batch_size = 40
  c.num_steps = 6
  c.data.source = "idx"
  return set_fields(c, overrides)


def set_fields(config, fields):
  """`config` with each dotted field of `fields` set to its value."""
  for k, v in fields.items():
    target = config
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    assert last in target, k
    target[last] = v
  return config


def synthetic(n: int, seed: int) -> data.ArrayDataset:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
  images[np.arange(n), labels * 2, :, 0] = 255  # learnable: the label is a bright row
  return data.ArrayDataset(images, labels)


def make_trainer(config, num_devices, train_n=64, eval_n=37):
  return training.Trainer(
    config, synthetic(train_n, 0), synthetic(eval_n, 1), parallel.devices(num_devices)
  )


def run_steps(config, num_devices, steps=3):
  trainer = make_trainer(config, num_devices)
  state = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
  state, metrics, _ = trainer.train(state, 0, steps)
  return trainer, state, metrics


def assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.mark.slow
def test_pmap_synced_bn_equals_one_device_on_the_global_batch():
  config = tiny_config()
  _, s8, m8 = run_steps(config, 8)
  _, s1, m1 = run_steps(config, 1)
  u8, u1 = parallel.unreplicate(s8), parallel.unreplicate(s1)
  assert_trees_close(u8.params, u1.params, rtol=2e-5, atol=1e-6)
  assert_trees_close(u8.batch_stats, u1.batch_stats, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(m8, m1, rtol=2e-5)
  # Every replica holds the same statistics.
  for leaf in jax.tree.leaves(s8.batch_stats):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


@pytest.mark.slow
def test_per_device_bn_differs_from_synced_but_replicas_agree():
  # A LeCun-normal start: batch variances of about 1, so that one step's 1 - decay share of
  # them shows in the running variance (from N(0, 0.01²) they are about 1e-3).
  unit = {"model.init_std": 1.0, "model.init_fan_in": True}
  _, synced, _ = run_steps(tiny_config(**unit), 8, steps=1)
  _, local, _ = run_steps(tiny_config(**unit, **{"bn.cross_device": False}), 8, steps=1)
  for leaf in jax.tree.leaves(local.batch_stats):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
  mean_synced = np.asarray(synced.batch_stats["bn0"]["var"][0])
  mean_local = np.asarray(local.batch_stats["bn0"]["var"][0])
  assert not np.allclose(mean_synced, mean_local, rtol=1e-4)


@pytest.mark.slow
def test_train_step_changes_batch_stats_eval_leaves_them_bit_identical():
  config = tiny_config()
  trainer = make_trainer(config, 2)
  state0 = trainer.init_state(synthetic(2, 0).images)
  before = jax.tree.map(np.asarray, state0.batch_stats)
  state = parallel.replicate(state0, trainer.devs)
  metrics = trainer.evaluate(state)  # untrained model: finite
  assert all(np.isfinite(v) for v in metrics.values())
  after_eval = parallel.unreplicate(state.batch_stats)
  jax.tree.map(np.testing.assert_array_equal, after_eval, before)
  state, _, _ = trainer.train(state, 0, 1)
  after_step = parallel.unreplicate(state.batch_stats)
  assert not np.allclose(after_step["bn0"]["mean"], before["bn0"]["mean"])
  assert int(after_step["bn0"]["count"]) == 1
  snapshot = jax.tree.map(np.array, after_step)
  trainer.evaluate(state)
  jax.tree.map(np.testing.assert_array_equal, parallel.unreplicate(state.batch_stats), snapshot)


@pytest.mark.slow
@pytest.mark.parametrize("use_bn", [True, False])
def test_eval_independent_of_eval_batch_size_and_device_count(use_bn):
  results = []
  for devices, eval_batch in ((1, 1000), (1, 7), (8, 8), (4, 24), (8, 1000)):
    config = tiny_config(**{"eval_batch_size": eval_batch, "model.use_bn": use_bn})
    trainer = make_trainer(config, devices)
    state = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
    state, _, _ = trainer.train(state, 0, 4)
    results.append(trainer.evaluate(state))
  for r in results[1:]:
    for k in results[0]:
      np.testing.assert_allclose(r[k], results[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
  # 37 eval examples: accuracy is a multiple of 1/37 (no example dropped or counted twice).
  acc = results[0]["eval/accuracy"] * 37
  assert abs(acc - round(acc)) < 1e-6


def test_probe_of_the_training_network_is_bn_with_batch_statistics():
  """probe/*: the last hidden layer's BN output, each fixed training batch normalized by
  its own statistics (NumPy), after steps that moved the population statistics away."""
  config = tiny_config()
  trainer = make_trainer(config, 1)
  state = parallel.replicate(trainer.init_state(synthetic(2, 0).images), trainer.devs)
  state, _, _ = trainer.train(state, 0, 4)
  got = trainer.evaluate(state)
  p = parallel.unreplicate(state).params
  train = synthetic(64, 0)
  k = -(-37 // config.batch_size)  # the eval set's size in training batches
  idx = data.train_batch_indices(64, 16, config.seed + training.engine.PROBE_SEED_OFFSET, 0, k)
  values = []
  for batch in idx:
    h = train.images[batch].reshape(len(batch), -1).astype(np.float64) / 255
    for i in range(2):
      z = h @ np.asarray(p[f"dense{i}"]["kernel"], np.float64)
      z = (z - z.mean(0)) / np.sqrt(z.var(0) + config.bn.epsilon)
      z = z * np.asarray(p[f"bn{i}"]["scale"]) + np.asarray(p[f"bn{i}"]["bias"])
      h = 1 / (1 + np.exp(-z))
    values.append(z[:, 3])
  want = np.percentile(np.concatenate(values), training.step.PERCENTILES)
  np.testing.assert_allclose(
    [got["probe/p15"], got["probe/p50"], got["probe/p85"]], want, rtol=1e-4, atol=1e-5
  )
  assert "probe_inference/p50" not in got


def test_masked_percentiles_are_numpys():
  rng = np.random.default_rng(0)
  values = rng.standard_normal(50).astype(np.float32)
  for mask in (np.ones(50), (rng.random(50) < 0.4).astype(np.float32), np.eye(50)[7]):
    qs = (0, 15, 50, 85, 100)
    got = training.step.masked_percentiles(jnp.asarray(values), jnp.asarray(mask), qs)
    want = np.percentile(values[mask > 0], qs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.isnan(training.step.masked_percentiles(jnp.asarray(values), jnp.zeros(50))).all()


def test_probe_of_the_inference_network_is_the_last_hidden_layers_pre_nonlinearity():
  config = tiny_config(**{"model.use_bn": False, "probe_network": "inference"})
  trainer = make_trainer(config, 1)
  state = trainer.init_state(synthetic(2, 0).images)
  got = trainer.evaluate(parallel.replicate(state, trainer.devs))
  assert "probe/p50" not in got
  eval_ds = synthetic(37, 1)
  x = eval_ds.images.reshape(37, -1).astype(np.float32) / 255
  p = state.params
  h = x
  for name in ("dense0", "dense1"):
    pre = h @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"])
    h = 1 / (1 + np.exp(-pre))
  want = np.percentile(pre[:, 3], training.step.PERCENTILES)
  np.testing.assert_allclose(
    [got["probe_inference/p15"], got["probe_inference/p50"], got["probe_inference/p85"]],
    want,
    rtol=1e-4,
    atol=1e-5,
  )


@pytest.mark.slow
def test_population_average_mode_recomputes_algorithm_2():
  config = tiny_config(
    **{"bn.population": "average", "bn.population_batches": 5, "bn.unbiased": True}
  )
  trainer, state, _ = run_steps(config, 2, steps=2)
  state = trainer.recompute_population(state)
  host = parallel.unreplicate(state)
  idx = data.train_batch_indices(64, 16, config.seed + 1_000_003, 0, 5)
  images = synthetic(64, 0).images
  k = np.asarray(host.params["dense0"]["kernel"])
  xs = [images[i].reshape(16, -1).astype(np.float32) / 255 @ k for i in idx]
  want_mean = np.mean([x.mean(0) for x in xs], 0)
  want_var = np.mean([x.var(0) for x in xs], 0) * 16 / 15
  np.testing.assert_allclose(host.batch_stats["bn0"]["mean"], want_mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(host.batch_stats["bn0"]["var"], want_var, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_compute_float32_params_and_statistics():
  config = tiny_config(**{"dtype": "bfloat16"})
  _, state, metrics = run_steps(config, 1, steps=2)
  assert np.all(np.isfinite(metrics))
  for leaf in jax.tree.leaves(state.params):
    assert leaf.dtype == jnp.float32
  for name, leaf in state.batch_stats["bn0"].items():
    assert leaf.dtype == (jnp.int32 if name == "count" else jnp.float32)


def test_model_builds_without_bias_when_bn_is_on():
  with_bn = models.build(tiny_config(), axis_name=None, dtype=jnp.float32)
  without = models.build(tiny_config(**{"model.use_bn": False}), axis_name=None, dtype=jnp.float32)
  x = jnp.zeros((2, 28, 28, 1))
  p_bn = with_bn.init(jax.random.PRNGKey(0), x)["params"]
  p_no = without.init(jax.random.PRNGKey(0), x)["params"]
  assert "bias" not in p_bn["dense0"] and "scale" in p_bn["bn0"]
  assert "bias" in p_no["dense0"] and "bn0" not in p_no
  # The paper's small Gaussian N(0, 0.01²), whatever the fan-in.
  assert abs(np.std(p_bn["dense0"]["kernel"]) / 0.01 - 1) < 0.05
  # 256 weights (a std estimate to about 4.4%); fan-in scaling would give 0.25.
  assert abs(np.std(p_bn["dense1"]["kernel"]) / 0.01 - 1) < 0.25


@pytest.mark.slow
def test_shard_map_backend_equals_pmap():
  _, s_pmap, m_pmap = run_steps(tiny_config(), 8)
  trainer, s_shmap, m_shmap = run_steps(tiny_config(parallel="shard_map"), 8)
  u1, u2 = parallel.unreplicate(s_pmap), parallel.unreplicate(s_shmap)
  assert_trees_close(u2.params, u1.params, rtol=1e-6, atol=1e-6)
  assert_trees_close(u2.batch_stats, u1.batch_stats, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(m_shmap, m_pmap, rtol=1e-6)
  evals = trainer.evaluate(s_shmap)
  assert 0 <= evals["eval/accuracy"] <= 1


@pytest.mark.slow
def test_bfloat16_loss_tracks_float32_on_a_short_run():
  _, _, m32 = run_steps(tiny_config(), 1, steps=20)
  _, _, m16 = run_steps(tiny_config(dtype="bfloat16"), 1, steps=20)
  np.testing.assert_allclose(m16[:, 0], m32[:, 0], rtol=0.05)
  assert not np.array_equal(m16[:, 0], m32[:, 0])  # bf16 really ran
