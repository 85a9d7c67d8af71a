"""models/lstm.py against a NumPy LSTM / BN-LSTM: per-time-step statistics, gradients, runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from idx_files import write_mnist_dir
from test_train import set_fields

from bn_repro import checkpoints, data, models, training, validation
from bn_repro.configs import seq_mnist
from bn_repro.errors import UserError
from bn_repro.models.lstm import LSTM
from bn_repro.rundir import RunDir

EPS, DECAY = 1e-5, 0.9


def numpy_lstm(images, p, sequence, stats=None, train_mode=False, xp=np):
  """Independent LSTM / BN-LSTM forward: logits and, in training, each step's batch moments.

  Gates (i, f, g, o) in that order along 4H. Without `stats` and not `train_mode`: the
  plain LSTM. `stats`: per-step population {'x': (mean, var), ...} for evaluation.
  `xp=jax.numpy` makes it differentiable (BN's backward then comes from autodiff).
  """
  b = images.shape[0]
  xs = images.reshape(b, images.shape[1], -1) if sequence == "rows" else images.reshape(b, -1, 1)
  n = p["kernel_h"].shape[0]
  h, c = xp.zeros((b, n)), xp.zeros((b, n))
  bn = train_mode or stats is not None
  seen = {"x": [], "h": [], "c": []}
  sigmoid = lambda v: 1 / (1 + xp.exp(-v))

  def norm(k, v, t, gamma, beta=0.0):
    if train_mode:
      mean, var = v.mean(0), v.var(0)
      seen[k].append((mean, var))
    else:
      mean, var = stats[k][0][t], stats[k][1][t]
    return gamma * (v - mean) / xp.sqrt(var + EPS) + beta

  for t in range(xs.shape[1]):
    wx, wh = xs[:, t] @ p["kernel_x"], h @ p["kernel_h"]
    if bn:
      wx, wh = norm("x", wx, t, p["scale_x"]), norm("h", wh, t, p["scale_h"])
    z = wx + wh + p["bias"]
    i, f, g, o = (z[:, k * n : (k + 1) * n] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * xp.tanh(g)
    h = sigmoid(o) * xp.tanh(norm("c", c, t, p["scale_c"], p["bias_c"]) if bn else c)
  logits = h @ p["logits"]["kernel"] + p["logits"]["bias"]
  return logits, {
    k: (xp.array([m for m, _ in v]), xp.array([s for _, s in v])) for k, v in seen.items() if v
  }


def perturbed(params, seed):
  """Parameters plus noise, so that biases, gammas and betas are all non-trivial."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    tree, [np.asarray(l) + 0.3 * rng.standard_normal(l.shape) for l in leaves]
  )


def tiny(use_bn, sequence="rows", **kw):
  model = LSTM(
    hidden=5, num_classes=3, sequence=sequence, use_bn=use_bn, epsilon=EPS, decay=DECAY, **kw
  )
  images = np.random.default_rng(0).random((6, 4, 3, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images)
  return model, images, perturbed(variables["params"], 1), variables.get("batch_stats")


@pytest.mark.parametrize("sequence", ["rows", "pixels"])
def test_forward_without_bn_equals_numpy(sequence):
  model, images, params, stats = tiny(False, sequence)
  assert stats is None
  got = model.apply({"params": params}, images, train=True)
  want, _ = numpy_lstm(images, params, sequence)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sequence", ["rows", "pixels"])
def test_bn_training_uses_each_steps_batch_statistics_and_updates_the_ema(sequence):
  model, images, params, stats = tiny(True, sequence)
  steps = 4 if sequence == "rows" else 12
  assert stats["mean_x"].shape == (steps, 20) and stats["mean_c"].shape == (steps, 5)
  old = {
    k: np.random.default_rng(2).random(v.shape) + 0.5 for k, v in stats.items() if k != "count"
  }
  old["count"] = np.int32(3)
  logits, updates = model.apply(
    {"params": params, "batch_stats": old}, images, train=True, mutable=["batch_stats"]
  )
  want, moments = numpy_lstm(images, params, sequence, train_mode=True)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
  new = updates["batch_stats"]
  assert int(new["count"]) == 4
  for k, (mean, var) in moments.items():
    np.testing.assert_allclose(
      new[f"mean_{k}"], DECAY * old[f"mean_{k}"] + (1 - DECAY) * mean, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
      new[f"var_{k}"], DECAY * old[f"var_{k}"] + (1 - DECAY) * var, rtol=1e-4, atol=1e-6
    )
    # Per time step: the steps' batch moments differ from each other.
    assert np.ptp(mean[1:], axis=0).max() > 1e-2


@pytest.mark.slow
def test_bn_gradient_equals_autodiff_of_the_reference():
  """BN's closed-form backward inside the time loop gives autodiff's gradients."""
  model, images, params, stats = tiny(True)
  y = np.random.default_rng(4).standard_normal((6, 3))

  def loss(p):
    logits, _ = model.apply(
      {"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(logits * y)

  ref_loss = lambda p: jnp.sum(numpy_lstm(images, p, "rows", train_mode=True, xp=jnp)[0] * y)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    jax.jit(jax.grad(loss))(params),
    jax.jit(jax.grad(ref_loss))(params),
  )


def test_unbiased_population_variance():
  model, images, params, stats = tiny(True, unbiased=True, population="average")
  _, updates = model.apply(
    {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
  )
  _, moments = numpy_lstm(images, params, "rows", train_mode=True)
  # Average mode from count 0: the population is this one batch, its variance times m/(m-1).
  np.testing.assert_allclose(
    updates["batch_stats"]["var_c"], moments["c"][1] * 6 / 5, rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    updates["batch_stats"]["mean_x"], moments["x"][0], rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize("sequence", ["rows", "pixels"])
def test_eval_normalizes_each_step_with_its_population_statistics(sequence):
  model, images, params, stats = tiny(True, sequence)
  rng = np.random.default_rng(3)
  population = {
    k: (rng.standard_normal(v.shape) if k.startswith("mean") else rng.random(v.shape) + 0.2)
    for k, v in stats.items()
    if k != "count"
  }
  before = {k: v.copy() for k, v in population.items()}
  got = model.apply(
    {"params": params, "batch_stats": population | {"count": np.int32(7)}}, images, train=False
  )
  want, _ = numpy_lstm(
    images,
    params,
    sequence,
    stats={k: (population[f"mean_{k}"], population[f"var_{k}"]) for k in ("x", "h", "c")},
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Another step's statistics give other outputs.
  rolled = {k: np.roll(v, 1, axis=0) for k, v in population.items()}
  other = model.apply({"params": params, "batch_stats": rolled | {"count": np.int32(7)}}, images)
  assert not np.allclose(other, got, atol=1e-4)
  jax.tree.map(np.testing.assert_array_equal, population, before)


@pytest.mark.slow
def test_gamma_starts_at_bn_scale_init_and_the_forget_gate_bias_at_one():
  model = LSTM(hidden=4, use_bn=True)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 3, 1)))["params"]
  for k in ("scale_x", "scale_h", "scale_c"):
    np.testing.assert_array_equal(params[k], np.float32(0.1))
  np.testing.assert_array_equal(params["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], 4))
  for g in range(4):  # each gate's recurrent block is orthogonal
    block = np.asarray(params["kernel_h"][:, 4 * g : 4 * g + 4])
    np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)


def tiny_config(variant="bn", **overrides):
  c = seq_mnist.get_config(variant)
  c.model.hidden = 8
  c.batch_size = 16
  c.eval_batch_size = 40
  c.num_steps = 4
  c.log_every = c.eval_every = 2
  c.checkpoint_every = 0
  c.tensorboard = False
  c.bn.epsilon = EPS
  c.data.source = "idx"
  return set_fields(c, overrides)


@pytest.mark.slow
def test_train_and_evaluate_on_eight_devices_with_algorithm_2(tmp_path):
  """A CLI-level run; its last checkpoint holds each step's statistics averaged over the
  population batches, each batch's moments taken over the global batch (all 8 devices)."""
  (tmp_path / "mnist").mkdir()
  write_mnist_dir(tmp_path / "mnist", train=64, test=24)
  config = tiny_config(
    **{
      "data.idx_dir": str(tmp_path / "mnist"),
      "bn.population": "average",
      "bn.population_batches": 3,
      "bn.unbiased": True,
    }
  )
  workdir = str(tmp_path / "run")
  last = training.train_and_evaluate(config, workdir)
  assert len(jax.local_devices()) == 8
  assert last.step == 4 and last.status == "done"
  for k in ("train/loss", "eval/accuracy", "eval/loss"):
    assert np.isfinite(last.metrics[k]), k
  assert json.loads((tmp_path / "run" / RunDir.STATUS).read_text()) == {
    "status": "done",
    "step": 4,
  }

  saved = checkpoints.manager(RunDir(workdir)).restore(4)
  params, stats = saved["params"], saved["batch_stats"]
  assert int(stats["count"]) == 3
  images = data.load_splits(config.data)[0].images.astype(np.float64) / 255
  idx = data.train_batch_indices(64, 16, config.seed + 1_000_003, 0, 3)
  moments = [numpy_lstm(images[i], params, "rows", train_mode=True)[1] for i in idx]
  for k in ("x", "h", "c"):
    mean = np.mean([m[k][0] for m in moments], 0)
    var = np.mean([m[k][1] * 16 / 15 for m in moments], 0)
    np.testing.assert_allclose(stats[f"mean_{k}"], mean, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(stats[f"var_{k}"], var, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("model.sequence", "columns", "'columns' is not one of 'rows', 'pixels'"),
    ("bn.renorm", True, "no renorm option"),
    ("ics_probe", True, "ICS probe measures layers"),
  ],
)
def test_bad_lstm_fields_are_one_line_user_errors(field, value, message):
  with pytest.raises(UserError, match=message) as e:
    validation.validate(tiny_config(**{field: value}))
  assert e.value.field == f"config.{field}" and "\n" not in str(e.value)


def test_registry_builds_the_lstm():
  model = models.build(tiny_config("nobn,pixels"), axis_name=None, dtype=jnp.float32)
  assert isinstance(model, LSTM) and model.sequence == "pixels" and not model.use_bn
