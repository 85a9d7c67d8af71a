"""The per-device functions of training: state, optimizer, the SGD step, a chunk of steps,
Algorithm 2's population pass and evaluation.

Pure and jit-able; collectives run over `parallel.AXIS`, so each function is the body of
a data-parallel program (bn_repro.training.engine builds the programs). A chunk is
`lax.scan` over steps: many SGD steps per device call.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax import lax

from bn_repro import batch_norm, models, parallel

PERCENTILES = (15, 50, 85)
EVAL_SUMS = ("correct", "top5", "loss", "count")


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: float
) -> optax.GradientTransformation:
  """SGD (with momentum if > 0), L2 weight decay on kernels, exponential learning-rate decay.

  Weight decay adds weight_decay * w to the gradient of every `kernel` (not to BN's
  scale and bias); the learning rate is multiplied by lr_decay_rate every
  lr_decay_epochs epochs (staircase; 0 = constant), epochs converted to steps here.
  """
  o = config.optimizer
  lr: Any = o.learning_rate
  if o.lr_decay_epochs > 0 and o.lr_decay_rate != 1.0:
    lr = optax.exponential_decay(
      o.learning_rate,
      transition_steps=max(1, round(o.lr_decay_epochs * steps_per_epoch)),
      decay_rate=o.lr_decay_rate,
      staircase=True,
    )
  parts = []
  if o.weight_decay > 0:
    kernels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=kernels))
  parts.append(optax.sgd(lr, momentum=o.momentum or None))
  return optax.chain(*parts)


def preprocess(images: jax.Array, dtype: Any) -> jax.Array:
  """uint8 pixels to [0, 1]."""
  return images.astype(dtype) * (1.0 / 255.0)


@functools.lru_cache(maxsize=8)
def _compiled_init(model: Any) -> Any:
  """`model.init` as one compiled program, not one per operation: on CPU the small
  Inception's init takes about 7 s against 23 s op by op. The same values bit for bit
  (common.gaussian_init); cached per model, so batched runs sharing one compile it once."""
  return jax.jit(functools.partial(model.init, train=False))


def create_train_state(
  config, model, sample_images: np.ndarray, steps_per_epoch: float
) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  variables = _compiled_init(model)(rng, preprocess(jnp.asarray(sample_images), jnp.float32))
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    tx=make_optimizer(config, steps_per_epoch),
  )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example (one-hot form: its gradient has no scatter)."""
  return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))


def train_rngs(key: jax.Array) -> dict[str, jax.Array]:
  """The rngs a model may draw from in training: dropout masks and noisy-BN noise."""
  return {"dropout": key, "noise": jax.random.fold_in(key, 1)}


# ---------------------------------------------------------------------------
# Per-device functions (SPMD, collectives over parallel.AXIS).


def train_step(
  state: TrainState,
  images,
  labels,
  *,
  dtype,
  sync_batch_stats: bool,
  seed: Any,
  update_scale: Any = None,
):
  """One SGD step on this device's share of the global batch.

  The dropout key is a pure function of (seed, step, device), so it needs no
  checkpointing and a resumed run draws the same masks. `update_scale` multiplies
  the optimizer's update (batched runs: a per-run learning rate with an optimizer
  built for learning rate 1, which is the same SGD for a constant per-run factor).
  """
  x = preprocess(images, dtype)
  rng = jax.random.fold_in(
    jax.random.fold_in(jax.random.PRNGKey(seed), state.step), lax.axis_index(parallel.AXIS)
  )

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs=train_rngs(rng),
    )
    loss = cross_entropy(logits, labels).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.pmean(grads)
  if sync_batch_stats:  # per-device BN: average the population statistics
    batch_stats = jax.tree.map(
      lambda v: parallel.pmean(v) if jnp.issubdtype(v.dtype, jnp.floating) else v, batch_stats
    )
  if update_scale is None:
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  else:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * update_scale, updates)
    state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      opt_state=opt_state,
      batch_stats=batch_stats,
    )
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, parallel.pmean(jnp.stack([loss, accuracy]))


def train_chunk(state, dataset, batches, seed, *, dtype, sync_batch_stats):
  """len(batches) steps; returns the state, per-step [loss, accuracy], and whether
  the final parameters and BN statistics are all finite (checked once per chunk).

  `batches` holds, per step, either example indices into the device-resident
  `dataset` (images, labels), or, with `dataset` = (), the (images, labels) themselves.
  `seed`: the run's seed as an int32 array (train_step's dropout keys).
  """

  def body(state, batch):
    if dataset:
      images, labels = dataset[0][batch], dataset[1][batch]
    else:
      images, labels = batch
    return train_step(
      state, images, labels, dtype=dtype, sync_batch_stats=sync_batch_stats, seed=seed
    )

  state, metrics = lax.scan(body, state, batches)
  return state, metrics, all_finite(state)


def all_finite(state: TrainState) -> jax.Array:
  """Whether every parameter and BN statistic of `state` is finite (one scalar)."""
  leaves = jax.tree.leaves((state.params, state.batch_stats))
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def recompute_population(state, images, labels, indices, *, dtype):
  """Algorithm 2: population statistics as the exact mean over len(indices) batches."""
  del labels

  def body(batch_stats, batch):
    idx, i = batch
    # Dropout and noise stay on, as in the training steps whose statistics this replaces.
    _, updates = state.apply_fn(
      {"params": state.params, "batch_stats": batch_stats},
      preprocess(images[idx], dtype),
      train=True,
      mutable=["batch_stats"],
      rngs=train_rngs(jax.random.fold_in(jax.random.PRNGKey(0), i)),
    )
    return updates["batch_stats"], None

  batch_stats, _ = lax.scan(
    body, batch_norm.reset_population(state.batch_stats), (indices, jnp.arange(len(indices)))
  )
  return state.replace(batch_stats=batch_stats)


def probe_values(state, images, *, dtype, probe_unit: int, train: bool) -> jax.Array:
  """The probe unit's values (models.PROBE) on a batch, as float32 [batch].

  train=True: the training network N^tr_BN, BN with this batch's statistics (dropout and
  noise drawn from a fixed key), nothing updated; train=False: the inference network,
  BN with the population statistics.
  """
  collections = ["intermediates", "batch_stats"] if train else ["intermediates"]
  _, inter = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats},
    preprocess(images, dtype),
    train=train,
    mutable=collections,
    rngs=train_rngs(jax.random.PRNGKey(0)) if train else None,
  )
  return inter["intermediates"][models.PROBE][0][:, probe_unit].astype(jnp.float32)


def masked_percentiles(values: jax.Array, mask: jax.Array, qs=PERCENTILES) -> jax.Array:
  """np.percentile(values[mask > 0], qs) (linear interpolation) on device; NaN when empty."""
  v, keep = values.reshape(-1), mask.reshape(-1) > 0
  n = jnp.sum(keep)
  ordered = jnp.sort(jnp.where(keep, v, jnp.inf))
  pos = jnp.asarray(qs, jnp.float32) / 100 * (n - 1).astype(jnp.float32)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  a, b = ordered[lo], ordered[hi]
  out = a + (b - a) * (pos - lo)
  return jnp.where(n > 0, out, jnp.nan)


def gather_devices(x: jax.Array) -> jax.Array:
  """x from every device of parallel.AXIS, stacked on a leading axis (no collective on one)."""
  return x[None] if lax.axis_size(parallel.AXIS) == 1 else lax.all_gather(x, parallel.AXIS)


def evaluate(state, images, labels, mask, probe_batches=(), *, dtype, probe_unit: int, probe=()):
  """One evaluation, on device: [EVAL_SUMS..., then PERCENTILES per network in `probe`].

  images, labels, mask: this device's eval batches [batch index, example, ...], every
  example once (mask 0: padding). probe: the probe's networks, a subset of ("train",
  "inference") in that order. "train" reads `probe_batches` = (dataset images, indices
  [batch, example]): fixed training batches in training mode; "inference" reads the eval
  batches. Percentiles are over every device's values.
  """
  inference = "inference" in probe

  def body(sums, batch):
    x, y, m = batch
    logits, inter = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      preprocess(x, dtype),
      train=False,
      mutable=["intermediates"],
    )
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(lax.top_k(logits, k)[1] == y[:, None], axis=-1).astype(jnp.float32)
    sums = sums + jnp.stack(
      [jnp.sum(correct * m), jnp.sum(top5 * m), jnp.sum(cross_entropy(logits, y) * m), jnp.sum(m)]
    )
    values = inter["intermediates"][models.PROBE][0][:, probe_unit] if inference else m
    return sums, values.astype(jnp.float32)

  sums, values = lax.scan(body, jnp.zeros(len(EVAL_SUMS)), (images, labels, mask))
  out = [lax.psum(sums, parallel.AXIS)]
  if "train" in probe:
    dataset, idx = probe_batches

    # vmap, not scan: each batch normalized by its own statistics, as one larger matmul.
    one = lambda x: probe_values(state, x, dtype=dtype, probe_unit=probe_unit, train=True)
    train_values = gather_devices(jax.vmap(one)(dataset[idx]))
    out.append(masked_percentiles(train_values, jnp.ones_like(train_values)))
  if inference:
    out.append(masked_percentiles(gather_devices(values), gather_devices(mask)))
  return jnp.concatenate(out)


def train_chunk_batched(states, dataset, batches, scales, seeds, *, dtype, sync_batch_stats):
  """len(batches) steps of R runs: batches [step, run, example] indices into `dataset`."""

  def one(state, idx, scale, seed):
    return train_step(
      state,
      dataset[0][idx],
      dataset[1][idx],
      dtype=dtype,
      sync_batch_stats=sync_batch_stats,
      seed=seed,
      update_scale=scale,
    )

  def body(states, idx):
    return jax.vmap(one)(states, idx, scales, seeds)

  states, metrics = lax.scan(body, states, batches)
  return states, metrics, jax.vmap(all_finite)(states)
