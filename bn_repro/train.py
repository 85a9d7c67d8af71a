"""Training: state, the per-device step, the data feeds, and the loop (`train_and_evaluate`).

A dataset that fits sits in device memory (uint8) and the host sends only example
indices (InMemoryFeed); a large one is streamed from the host (StreamFeed). Either
way `lax.scan` runs many SGD steps per device call, and the order of examples is a
pure function of (seed, step) (`data.train_batch_indices`), so the step is the
data position and a resumed run sees exactly the batches an uninterrupted one would.
"""

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax import lax
from jax.experimental import multihost_utils

from bn_repro import analysis, batch_norm, data, models, parallel, validation
from bn_repro.errors import UserError
from bn_repro.metrics import MetricWriter, NullWriter
from bn_repro.models import common
from bn_repro.rundir import RunDir, write_json

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
LOCK_FILE = "lock"
CHECKPOINT_DIR = "checkpoints"
PERCENTILES = (15, 50, 85)
# Algorithm 2 draws its batches from the training stream of seed config.seed + this.
POPULATION_SEED_OFFSET = 1_000_003

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = (
  "num_steps",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "tensorboard",
  "num_devices",
  "steps_per_call",
  "profile_start_step",
  "profile_num_steps",
)


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class Diverged(Exception):
  """The loss or the BN statistics stopped being finite; `step` is the first bad step."""

  def __init__(self, step: int):
    self.step = step
    super().__init__(f"diverged at step {step}")


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


def create_train_state(
  config, model, sample_images: np.ndarray, steps_per_epoch: float
) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  variables = model.init(rng, preprocess(jnp.asarray(sample_images), jnp.float32), train=False)
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


def train_chunk(state, dataset, batches, *, dtype, sync_batch_stats, seed):
  """len(batches) steps; returns the state, per-step [loss, accuracy], and whether
  the final parameters and BN statistics are all finite (checked once per chunk).

  `batches` holds, per step, either example indices into the device-resident
  `dataset` (images, labels), or, with `dataset` = (), the (images, labels) themselves.
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


EVAL_SUMS = ("correct", "top5", "loss", "count")


def evaluate(state, images, labels, mask, *, dtype, probe_unit: int):
  """Sums (EVAL_SUMS) over this device's eval batches, and the probe unit's values."""

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
    probe = inter.get("intermediates", {}).get(models.PROBE)
    probe = probe[0][:, probe_unit].astype(jnp.float32) if probe else jnp.zeros_like(m)
    return sums, probe

  sums, probes = lax.scan(body, jnp.zeros(len(EVAL_SUMS)), (images, labels, mask))
  return lax.psum(sums, parallel.AXIS), probes


# ---------------------------------------------------------------------------
# Host side.


class InMemoryFeed:
  """A dataset held in device memory (uint8); the host sends example indices only."""

  def __init__(self, config, train_ds: data.ArrayDataset, eval_ds: data.ArrayDataset, devs):
    self.config, self.devs = config, devs
    n = len(devs)
    # Several processes (hosts): each holds the dataset and takes its slice of every global
    # batch and of the eval set; collectives over AXIS span all processes' devices.
    self.process, self.processes = jax.process_index(), jax.process_count()
    self.num_train = len(train_ds)
    self.sample_images = train_ds.images[:2]
    self.dataset = parallel.replicate((train_ds.images, train_ds.labels), devs)
    self.eval_data = self._eval_layout(eval_ds)
    # The first eval_train_examples training examples, evaluated like the eval set
    # (population statistics, no dropout): the train side of the train-test gap.
    n_train_eval = min(config.eval_train_examples, len(train_ds))
    self.train_eval_data = (
      self._eval_layout(
        data.ArrayDataset(train_ds.images[:n_train_eval], train_ds.labels[:n_train_eval])
      )
      if n_train_eval
      else None
    )

  def _eval_layout(self, ds: data.ArrayDataset):
    """Every example once, padding with mask 0; layout [device, batch index, example]."""
    n = len(self.devs)
    world = n * self.processes
    per_device = max(1, min(self.config.eval_batch_size // world, math.ceil(len(ds) / world)))
    images, labels, mask = data.pad_for_eval(ds, world * per_device)
    part = lambda a: np.split(a, self.processes)[self.process]
    shape = lambda a: part(a).reshape((n, -1, per_device) + a.shape[1:])
    return parallel.shard((shape(images), shape(labels), shape(mask)), self.devs)

  def indices(self, seed: int, start: int, steps: int) -> jax.Array:
    """[device, step, local example] training indices: this process's slice of each batch."""
    idx = data.train_batch_indices(self.num_train, self.config.batch_size, seed, start, steps)
    idx = np.split(idx, self.processes, axis=1)[self.process]
    return parallel.shard(idx.reshape(steps, len(self.devs), -1).transpose(1, 0, 2), self.devs)

  def train_inputs(self, start: int, steps: int):
    return self.dataset, self.indices(self.config.seed, start, steps)

  def eval_inputs(self, train: bool = False):
    if train:
      if self.train_eval_data is not None:
        yield self.train_eval_data
    else:
      yield self.eval_data

  def close(self):
    pass


class StreamFeed:
  """Batches streamed from the host (datasets that do not fit in device memory)."""

  def __init__(self, config, devs):
    self.config, self.devs = config, devs
    kw = dict(
      global_batch=config.batch_size,
      image_size=config.data.image_size,
      seed=config.seed,
      distortion=config.data.distortion,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    self.train_stream = data.StreamingImages(
      config.data, split=config.data.train_split, train=True, **kw
    )
    self.eval_stream = data.StreamingImages(
      config.data, split=config.data.eval_split, train=False, **kw
    )
    self.num_train = len(self.train_stream)
    size = config.data.image_size
    self.sample_images = np.zeros((2, size, size, 3), np.uint8)
    self._it, self._next = None, None

  def _to_devices(self, *arrays):
    """[step, local batch, ...] host arrays to [device, step, per-device batch, ...]."""
    n = len(self.devs)
    return parallel.shard(
      tuple(np.swapaxes(a.reshape((a.shape[0], n, -1) + a.shape[2:]), 0, 1) for a in arrays),
      self.devs,
    )

  def train_inputs(self, start: int, steps: int):
    if self._next != start:
      self.close()
      self._it = self.train_stream.batches(start)
    batches = [next(self._it) for _ in range(steps)]
    self._next = start + steps
    return (), self._to_devices(
      np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
    )

  def eval_inputs(self, train: bool = False):
    if train:  # validation refuses eval_train_examples for streamed datasets
      return
    with self.eval_stream.eval_batches(self.config.eval_batch_size) as it:
      for images, labels, mask in it:
        yield self._to_devices(images[None], labels[None], mask[None])

  def close(self):
    if self._it is not None:
      self._it.close()
      self._it, self._next = None, None


class Trainer:
  """Holds the compiled per-device functions and the data feed of one run.

  `train_ds` / `eval_ds` are ArrayDatasets (kept in device memory), or None for a
  dataset streamed from tfds (`data.name` in STREAMED).
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    train_ds: data.ArrayDataset | None,
    eval_ds: data.ArrayDataset | None,
    devs,
  ):
    self.config = config
    self.devs = devs
    dtype = common.DTYPES[config.dtype]
    self.model = models.build(config, axis_name=parallel.AXIS, dtype=dtype)
    sync = config.model.use_bn and not config.bn.cross_device
    backend = config.parallel
    self._train = parallel.data_parallel(
      lambda *a: train_chunk(*a, dtype=dtype, sync_batch_stats=sync, seed=config.seed),
      devs,
      donate_argnums=(0,),
      backend=backend,
    )
    self._population = parallel.data_parallel(
      lambda *a: recompute_population(*a, dtype=dtype), devs, donate_argnums=(0,), backend=backend
    )
    self._eval = parallel.data_parallel(
      lambda *a: evaluate(*a, dtype=dtype, probe_unit=config.model.probe_unit),
      devs,
      backend=backend,
    )
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0
    self.feed = (
      InMemoryFeed(config, train_ds, eval_ds, devs)
      if train_ds is not None
      else StreamFeed(config, devs)
    )
    self.num_train = self.feed.num_train
    self._ics = (
      analysis.ics_probe(
        config,
        models.build(config, axis_name=None, dtype=dtype),
        train_ds,
        preprocess=preprocess,
        loss=cross_entropy,
        rngs=train_rngs(jax.random.PRNGKey(config.seed + 17)),
      )
      if config.ics_probe and train_ds is not None
      else None
    )

  def init_state(self, sample_images: np.ndarray | None = None) -> TrainState:
    sample_images = self.feed.sample_images if sample_images is None else sample_images
    state = create_train_state(
      self.config, self.model, sample_images, self.num_train / self.config.batch_size
    )
    _, inter = jax.eval_shape(
      lambda: self.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        preprocess(jnp.asarray(sample_images), jnp.float32),
        train=False,
        mutable=["intermediates"],
      )
    )
    self.has_probe = models.PROBE in inter.get("intermediates", {})
    return state

  def train(self, state, start: int, steps: int):
    """Runs `steps` steps from `start`: the state, host [steps, 2] metrics, all finite."""
    args = (state,) + tuple(self.feed.train_inputs(start, steps))
    if steps not in self._compiled:
      t = time.perf_counter()
      # Compiled ahead of time to time compilation apart; a multi-process pmap compiles
      # on its first call instead (its AOT path expects global arrays).
      self._compiled[steps] = (
        self._train.lower(*args).compile() if jax.process_count() == 1 else self._train
      )
      self.compile_seconds += time.perf_counter() - t
    state, metrics, finite = self._compiled[steps](*args)
    return state, np.asarray(metrics[0]), bool(finite[0])

  def recompute_population(self, state):
    """Algorithm 2 over bn.population_batches training batches (in-memory datasets)."""
    idx = self.feed.indices(
      self.config.seed + POPULATION_SEED_OFFSET, 0, self.config.bn.population_batches
    )
    return self._population(state, *self.feed.dataset, idx)

  def evaluate(self, state) -> dict[str, float]:
    """eval/* (and probe/*) on the eval set; train_eval/* on the first
    eval_train_examples training examples; ics/* when config.ics_probe."""
    out = self._evaluate(state, "eval", self.feed.eval_inputs(), self.has_probe)
    if self.config.eval_train_examples:
      out.update(self._evaluate(state, "train_eval", self.feed.eval_inputs(train=True), False))
    if self._ics is not None:
      out.update(self._ics(parallel.unreplicate(state)))
    return out

  def _evaluate(self, state, prefix: str, inputs, probe: bool) -> dict[str, float]:
    totals = np.zeros(len(EVAL_SUMS))
    values = []
    for images, labels, mask in inputs:
      sums, probes = self._eval(state, images, labels, mask)
      totals += np.asarray(sums[0], np.float64)
      if probe:
        probes, mask = np.asarray(probes), np.asarray(mask)
        if jax.process_count() > 1:  # every process's share of the eval set
          probes, mask = (np.asarray(x) for x in multihost_utils.process_allgather((probes, mask)))
        values.append(probes.reshape(-1)[mask.reshape(-1) > 0])
    correct, top5, loss, count = totals
    out = {
      f"{prefix}/accuracy": correct / count,
      f"{prefix}/top5": top5 / count,
      f"{prefix}/loss": loss / count,
    }
    if probe:
      for p, v in zip(PERCENTILES, np.percentile(np.concatenate(values), PERCENTILES)):
        out[f"probe/p{p}"] = float(v)
    return out

  def close(self):
    self.feed.close()


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v

  walk(config.to_dict(), "")
  return out


def _check_saved_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  flat_saved = flat_config(ml_collections.ConfigDict(saved))
  flat_new = flat_config(config)
  # Fields only one side has come from a newer or older version of the code, not the user.
  differ = sorted(
    k
    for k in set(flat_saved) & set(flat_new)
    if k not in RESUMABLE_CHANGES and flat_saved[k] != flat_new[k]
  )
  if differ:
    detail = ", ".join(f"{k} ({flat_saved.get(k)!r} -> {flat_new.get(k)!r})" for k in differ)
    raise UserError(
      f"workdir {workdir} holds a run with a different config: {detail}; "
      "use a new --workdir, rerun with the saved config, or pass --allow_config_change",
      field="--workdir",
    )


def checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
  """Orbax manager of <workdir>/checkpoints.

  The state is replicated, so with several processes each one reads the checkpoint
  on its own and process 0 alone writes it (the workdir must be shared storage).
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
  if jax.process_count() > 1:
    os.makedirs(directory, exist_ok=True)
    me = jax.process_index()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=3,
      create=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}
      ),
    )
  return ocp.CheckpointManager(
    directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def to_checkpoint(state: TrainState, config) -> dict:
  step = int(state.step)
  return {
    "step": step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
    "data_position": {"seed": config.seed, "examples": step * config.batch_size},
  }


def is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def next_stop(step: int, config) -> int:
  """The next step at which something happens: log, eval, checkpoint, the end, or the
  end of a device call of at most steps_per_call steps."""
  stops = [config.num_steps]
  if config.steps_per_call > 0:
    stops.append(step + config.steps_per_call)
  for every in (config.log_every, config.eval_every, config.checkpoint_every):
    if every > 0:
      stops.append((step // every + 1) * every)
  return min(stops)


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Stopped(Exception):
  """A SIGTERM/SIGINT stopped the run after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"stopped by signal {signum} at step {step}")


class _StopSignals:
  """Turns SIGTERM/SIGINT into a request the loop honours at its next chunk boundary.

  A second signal while the first is pending interrupts at once.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:
      raise KeyboardInterrupt
    self.requested = signum
    logging.warning(
      "Signal %d: saving a checkpoint at the end of this chunk, then stopping "
      "(send it again to stop at once)",
      signum,
    )

  def agreed(self) -> int | None:
    """The pending signal as all processes see it: with several processes, a signal that
    reached any of them stops all of them at the same step (else the others would wait
    forever in the next collective)."""
    if jax.process_count() == 1:
      return self.requested
    seen = multihost_utils.process_allgather(np.asarray(self.requested or 0, np.int32))
    return int(np.max(seen)) or None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def _exclusive_workdir(workdir: str):
  """Creates `workdir` and holds an exclusive lock on it (released when the process dies)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(
      f"cannot write to {workdir} ({e.strerror}); choose a writable --workdir", field="--workdir"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      raise UserError(
        f"{workdir} is in use by another run (pid {owner}); wait for it to "
        "finish or use another --workdir",
        field="--workdir",
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)


def _check_disk(workdir: str, state: TrainState) -> None:
  """Refuses to start when the workdir cannot hold a few checkpoints."""
  nbytes = sum(
    np.asarray(x).nbytes
    for x in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
  )
  need = 4 * nbytes + (16 << 20)
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise UserError(
      f"{workdir} has {free >> 20} MiB free but checkpoints need about "
      f"{need >> 20} MiB; free space or choose another --workdir",
      field="--workdir",
    )


def _paths(tree: Any) -> dict[str, Any]:
  """Leaves by path, with attribute and key steps written alike ("['a']['b']")."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {re.sub(r"\.(\w+)", r"['\1']", jax.tree_util.keystr(p)): v for p, v in leaves}


def _compatibility_problems(metadata: Any, template: Any) -> list[str]:
  """Differences in structure, shape or dtype between a checkpoint and the model's state."""
  saved, wanted = _paths(metadata), _paths(template)
  problems = [f"{k} missing from the checkpoint" for k in sorted(set(wanted) - set(saved))]
  problems += [
    f"{k} in the checkpoint but not in the model" for k in sorted(set(saved) - set(wanted))
  ]
  for k in sorted(set(saved) & set(wanted)):
    shape_saved = tuple(getattr(saved[k], "shape", ()) or ())
    shape_wanted = tuple(np.shape(wanted[k]))
    if shape_saved != shape_wanted:
      problems.append(f"{k} has shape {shape_saved} in the checkpoint, {shape_wanted} in the model")
  return problems


def _restore(mgr: ocp.CheckpointManager, template: dict, fallback: bool) -> tuple[int, Any]:
  """(step, restored tree) of the newest usable checkpoint, or (0, None) when there is none."""
  steps = sorted(mgr.all_steps(), reverse=True)
  for step in steps:
    older = [s for s in steps if s < step]
    hint = (
      f"rerun with --fallback_checkpoint to resume from an older one (steps {older})"
      if older
      else "delete it to start over"
    )
    try:
      problems = _compatibility_problems(mgr.item_metadata(step).tree, template)
      if not problems:
        return step, mgr.restore(step, args=ocp.args.StandardRestore(template))
      reason = (
        "it was written by a different model: "
        + "; ".join(problems[:3])
        + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
      )
      hint = "use a new --workdir for a different model"
    except Exception as e:  # pylint: disable=broad-except  # corrupt or truncated files
      reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    where = os.path.join(str(mgr.directory), str(step))
    if not fallback:
      raise UserError(f"checkpoint {where} cannot be restored: {reason}; {hint}", field="--workdir")
    logging.warning("Checkpoint %s cannot be restored (%s); trying the previous one", where, reason)
  if steps:
    raise UserError(
      f"no checkpoint in {mgr.directory} can be restored; delete them to start over",
      field="--workdir",
    )
  return 0, None


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  fallback_checkpoint: bool = False,
  allow_config_change: bool = False,
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last metrics.

  Raises UserError for bad input (before anything is written), Diverged when the
  loss, the parameters or the BN statistics stop being finite (after recording
  status "diverged"; the last checkpoint is the last good state) and Stopped after
  SIGTERM/SIGINT (after saving a checkpoint).

  Args:
    config: the experiment.
    workdir: where checkpoints, metrics, config and status go; one run at a time.
    fallback_checkpoint: if the newest checkpoint cannot be restored, use the newest
      one that can (otherwise that is an error).
    allow_config_change: resume even if the saved config differs from `config`.
  """
  validation.validate(config)
  devs = parallel.devices(config.num_devices)
  validation.validate_devices(config, len(devs), jax.process_count())
  if config.data.name in data.STREAMED:
    train_ds = eval_ds = None
  else:
    train_ds, eval_ds = data.load_splits(config.data)
    validation.validate_data(config, train_ds, eval_ds)
  if not allow_config_change:
    _check_saved_config(workdir, config)
  trainer = Trainer(config, train_ds, eval_ds, devs)
  state = trainer.init_state()

  primary = jax.process_index() == 0  # the one process that writes the workdir
  with (
    _exclusive_workdir(workdir) if primary else contextlib.nullcontext(),
    _StopSignals() as signals,
  ):
    if primary:
      _check_disk(workdir, state)
    mgr = checkpoint_manager(workdir)
    try:
      start, restored = _restore(mgr, to_checkpoint(state, config), fallback_checkpoint)
      if primary:
        write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
        write_json(os.path.join(workdir, STATUS_FILE), {"status": "running", "step": start})
      writer = RunDir(workdir).metric_writer(config.tensorboard) if primary else NullWriter()
      if restored is not None:
        state = state.replace(
          step=restored["step"],
          params=restored["params"],
          batch_stats=restored["batch_stats"],
          opt_state=restored["opt_state"],
        )
        logging.info("Resumed from the checkpoint at step %d in %s", start, workdir)
      writer.truncate_after(start if restored is not None else -1)  # lines past the checkpoint
      try:
        return _loop(trainer, parallel.replicate(state, devs), start, mgr, writer, signals, workdir)
      finally:
        writer.close()
        trainer.close()
    except OSError as e:
      raise UserError(
        f"writing to {workdir} failed ({e.strerror or e}); the last checkpoint "
        f"is step {mgr.latest_step()}; fix it and rerun to resume",
        field="--workdir",
      ) from None
    finally:
      mgr.wait_until_finished()
      mgr.close()


def _loop(
  trainer: Trainer,
  state,
  start: int,
  mgr,
  writer: MetricWriter,
  signals: _StopSignals,
  workdir: str,
) -> dict[str, Any]:
  """Chunks of steps between log / eval / checkpoint points, from `start` to the end."""
  config = trainer.config
  primary = jax.process_index() == 0
  profiler = _Profiler(config, workdir)
  last: dict[str, Any] = {}
  step = start
  # Figure 3's "steps to reach accuracy X": written once, at the first eval that gets there.
  target_open = (
    primary
    and config.target_accuracy > 0
    and not any("target/reached" in e for e in (RunDir(workdir).metrics() if start else []))
  )

  def save():
    if primary:
      mgr.save(step, args=ocp.args.StandardSave(to_checkpoint(parallel.unreplicate(state), config)))

  def set_status(**status):
    if primary:
      write_json(os.path.join(workdir, STATUS_FILE), status)

  try:
    if start == 0 and config.eval_every > 0:
      state, last = _eval_and_check(trainer, state, config, 0)
      writer.write(0, last)
    t_start = time.perf_counter()
    while step < config.num_steps:
      profiler.update(step)
      stop = next_stop(step, config)
      t = time.perf_counter()
      compile_before = trainer.compile_seconds
      state, chunk, finite = trainer.train(state, step, stop - step)
      elapsed = time.perf_counter() - t - (trainer.compile_seconds - compile_before)
      bad = np.flatnonzero(
        ~np.isfinite(chunk[:, 0]) | ((config.max_loss > 0) & (chunk[:, 0] > config.max_loss))
      )
      if bad.size:
        raise Diverged(step + int(bad[0]) + 1)
      if not finite:  # the last update made parameters or BN statistics NaN/Inf
        raise Diverged(stop)
      step = stop
      scalars: dict[str, Any] = {}
      if is_due(step, config.log_every, config.num_steps):
        scalars.update(
          {
            "train/loss": float(chunk[:, 0].mean()),
            "train/accuracy": float(chunk[:, 1].mean()),
            "steps_per_sec": len(chunk) / max(elapsed, 1e-9),
          }
        )
        if trainer.compile_seconds > compile_before:
          scalars["compile_seconds"] = trainer.compile_seconds - compile_before
      if is_due(step, config.eval_every, config.num_steps):
        state, evals = _eval_and_check(trainer, state, config, step)
        scalars.update(evals)
        if target_open and evals["eval/accuracy"] >= config.target_accuracy:
          scalars["target/reached"] = config.target_accuracy  # first step at the target
          target_open = False
      if scalars:
        writer.write(step, scalars)
        last = scalars | {"step": step}
        rate = (step - start) / max(time.perf_counter() - t_start - trainer.compile_seconds, 1e-9)
        logging.info(
          "step %d/%d  %s  ETA %s",
          step,
          config.num_steps,
          "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
          _format_eta((config.num_steps - step) / max(rate, 1e-9)),
        )
      stop_signal = signals.agreed()
      if is_due(step, config.checkpoint_every, config.num_steps) or stop_signal:
        save()
      if stop_signal and step < config.num_steps:
        writer.flush()
        set_status(status="stopped", step=step)
        raise Stopped(step, stop_signal)
  except Diverged as e:
    set_status(status="diverged", step=e.step)
    writer.write(e.step, {"diverged": True})
    raise
  finally:
    profiler.stop()
  set_status(status="done", step=step)
  return last


class _Profiler:
  """A jax.profiler trace of the chunks that start in [profile_start_step, + profile_num_steps).

  Traces go to <workdir>/profile (open with TensorBoard's profile plugin or Perfetto).
  Windows are rounded to chunk boundaries: a chunk runs many steps in one device call.
  """

  def __init__(self, config, workdir: str):
    self.start = config.profile_start_step
    self.end = self.start + config.profile_num_steps
    self.logdir = os.path.join(workdir, "profile")
    self.active = False

  def update(self, step: int) -> None:
    if not self.active and self.start >= 0 and self.start <= step < self.end:
      jax.profiler.start_trace(self.logdir)
      self.active = True
    elif self.active and step >= self.end:
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("Wrote a profile to %s", self.logdir)


def _eval_and_check(trainer: Trainer, state, config, step: int):
  if config.model.use_bn and config.bn.population == "average":
    state = trainer.recompute_population(state)
  evals = trainer.evaluate(state)
  if not all(math.isfinite(v) for v in evals.values()):
    raise Diverged(step)
  return state, evals
