"""Compiled programs for R >= 1 runs of one model: the training engine.

`Trainer` holds one run's programs (chunk of SGD steps, Algorithm 2's pass,
evaluation) and its data feed. `BatchedTrainer` trains R > 1 runs of one config family
in one program, a vmap over a run axis: runs may differ in `seed` and
`optimizer.learning_rate` only (VARYING), so that every run has the same shapes; the
learning rate enters as a per-run factor on the update of an optimizer built for
learning rate 1, which is the same SGD (momentum, weight decay, decay schedule) for a
constant factor. Its runs spread over rows of devices where the process has more than
one run needs (parallel.run_shards).

Both present the interface the loop (bn_repro.training.loop) drives, whatever R is:
  initial_states() -> host states      host_run(states, r) / host_with(runs) / place(states)
  train_runs(states, start, steps) -> states, metrics [steps, R, 2], finite [R]
  evaluate_run(states, r) -> states, {name: value}      device_run(states, r) -> run r's state
R = 1 keeps its own (un-vmapped) program, so a single run's numbers do not depend on
the batched path.
"""

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bn_repro import analysis, data, fields, models, parallel
from bn_repro.errors import UserError
from bn_repro.models import common
from bn_repro.training import step as steps_lib
from bn_repro.training.feeds import InMemoryFeed, StreamFeed
from bn_repro.training.step import (
  EVAL_SUMS,
  PERCENTILES,
  TrainState,
  create_train_state,
  cross_entropy,
  preprocess,
  train_rngs,
)

# Algorithm 2 draws its batches from the training stream of seed config.seed + this.
POPULATION_SEED_OFFSET = 1_000_003
# The probe of the training network reads the first batches of the stream of seed + this.
PROBE_SEED_OFFSET = 2_000_003
# The metrics of the probe of each network: <prefix>/p15, /p50, /p85.
PROBE_PREFIX = {"train": "probe", "inference": "probe_inference"}
VARYING = ("seed", "optimizer.learning_rate")


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
    parallel.log_pinned(config)
    dtype = self.dtype = common.DTYPES[config.dtype]
    self.model = models.build(config, axis_name=parallel.AXIS, dtype=dtype)
    sync = config.model.use_bn and not config.bn.cross_device
    backend = config.parallel
    self._train = parallel.data_parallel(
      lambda *a: steps_lib.train_chunk(*a, dtype=dtype, sync_batch_stats=sync),
      devs,
      donate_argnums=(0,),
      backend=backend,
    )
    # The seed is an argument, not a constant of the program: runs that differ only in it
    # share one compiled program (and its entry in the compilation cache).
    self._seed = parallel.replicate(np.asarray(config.seed, np.int32), devs)
    self._population = parallel.data_parallel(
      lambda *a: steps_lib.recompute_population(*a, dtype=dtype),
      devs,
      donate_argnums=(0,),
      backend=backend,
    )
    self._evals: dict[tuple[str, ...], Any] = {}  # by the probe's networks
    self._probe_batches: dict[int, Any] = {}  # by seed
    self.num_probe_batches = max(1, math.ceil(len(eval_ds) / config.batch_size)) if eval_ds else 0
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0
    self.feed: InMemoryFeed | StreamFeed = (
      InMemoryFeed(config, train_ds, eval_ds, devs)
      if train_ds is not None and eval_ds is not None
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
    args = (state, *self.feed.train_inputs(start, steps), self._seed)
    if steps not in self._compiled:
      t = time.perf_counter()
      logging.info("compiling the training program (%d steps a call) ...", steps)
      # Compiled ahead of time to time compilation apart; a multi-process pmap compiles
      # on its first call instead (its AOT path expects global arrays).
      self._compiled[steps] = (
        self._train.lower(*args).compile() if jax.process_count() == 1 else self._train
      )
      self.compile_seconds += time.perf_counter() - t
      logging.info("compiled in %.1f s", time.perf_counter() - t)
    state, metrics, finite = self._compiled[steps](*args)
    return state, np.asarray(metrics[0]), bool(finite[0])

  def compiled(self, steps: int) -> Any:
    """The compiled program of a chunk of `steps` steps (after a chunk that long has run)."""
    return self._compiled[steps]

  @property
  def in_memory(self) -> InMemoryFeed:
    """The feed of a dataset held in device memory (Algorithm 2 and batched runs need one)."""
    assert isinstance(self.feed, InMemoryFeed), "a streamed dataset has no copy on the devices"
    return self.feed

  def recompute_population(self, state):
    """Algorithm 2 over bn.population_batches training batches (in-memory datasets)."""
    idx = self.in_memory.indices(
      self.config.seed + POPULATION_SEED_OFFSET, 0, self.config.bn.population_batches
    )
    return self._population(state, *self.in_memory.dataset, idx)

  def evaluate(self, state, seed: int | None = None) -> dict[str, float]:
    """eval/* and the probe on the eval set; train_eval/* on the first eval_train_examples
    training examples; ics/* when config.ics_probe. `seed` picks the probe's training
    batches (default config.seed)."""
    seed = self.config.seed if seed is None else seed
    out = self._evaluate(state, "eval", self.feed.eval_inputs(), self.probe_networks(), seed)
    if self.config.eval_train_examples:
      out.update(self._evaluate(state, "train_eval", self.feed.eval_inputs(train=True), (), seed))
    if self._ics is not None:
      out.update(self._ics(parallel.unreplicate(state)))
    return out

  def probe_networks(self) -> tuple[str, ...]:
    """The networks the probe reads (config.probe_network), () without a probe. A streamed
    dataset has no training batches on the devices, and its eval takes several calls: no probe."""
    if not self.has_probe or not isinstance(self.feed, InMemoryFeed):
      return ()
    mode = self.config.probe_network
    return ("train", "inference") if mode == "both" else (mode,)

  def probe_batches(self, seed: int) -> tuple[Any, Any]:
    """The probe's fixed training batches: (device dataset, indices [device, batch, example]),
    the first num_probe_batches batches of the stream of seed + PROBE_SEED_OFFSET."""
    if seed not in self._probe_batches:
      feed = self.in_memory
      idx = feed.indices(seed + PROBE_SEED_OFFSET, 0, self.num_probe_batches)
      self._probe_batches[seed] = (feed.dataset[0], idx)
    return self._probe_batches[seed]

  def _eval_fn(self, probe: tuple[str, ...]) -> Any:
    if probe not in self._evals:
      kw = dict(dtype=self.dtype, probe_unit=self.config.model.probe_unit, probe=probe)
      self._evals[probe] = parallel.data_parallel(
        lambda *a: steps_lib.evaluate(*a, **kw), self.devs, backend=self.config.parallel
      )
    return self._evals[probe]

  def _evaluate(self, state, prefix: str, inputs, probe: tuple[str, ...], seed: int):
    """One compiled call per batch of inputs (one for a dataset in memory), one transfer."""
    extra = (self.probe_batches(seed),) if "train" in probe else ()
    totals = None
    for images, labels, mask in inputs:
      out = np.asarray(self._eval_fn(probe)(state, images, labels, mask, *extra)[0], np.float64)
      totals = out if totals is None else totals + out  # several batches: streamed, no probe
    assert totals is not None, "an eval set has at least one batch"
    correct, top5, loss, count = totals[: len(EVAL_SUMS)]
    result: dict[str, float] = {
      f"{prefix}/accuracy": correct / count,
      f"{prefix}/top5": top5 / count,
      f"{prefix}/loss": loss / count,
    }
    values = totals[len(EVAL_SUMS) :].reshape(len(probe), len(PERCENTILES))
    for network, row in zip(probe, values):
      for p, v in zip(PERCENTILES, row):
        result[f"{PROBE_PREFIX[network]}/p{p}"] = float(v)
    return result

  def close(self):
    self.feed.close()

  # The engine interface (one run: r is 0).
  @property
  def configs(self) -> list[ml_collections.ConfigDict]:
    return [self.config]

  def initial_states(self) -> TrainState:
    return self.init_state()

  def host_run(self, states: TrainState, r: int) -> TrainState:
    del r
    return states

  def host_with(self, runs: Sequence[TrainState]) -> TrainState:
    (state,) = runs
    return state

  def place(self, states: TrainState) -> Any:
    return parallel.replicate(states, self.devs)

  def device_run(self, states: Any, r: int) -> TrainState:
    del r
    return parallel.unreplicate(states)

  def train_runs(self, states: Any, start: int, steps: int) -> tuple[Any, np.ndarray, np.ndarray]:
    states, metrics, finite = self.train(states, start, steps)
    return states, metrics[:, None], np.array([finite])

  def evaluate_run(self, states: Any, r: int) -> tuple[Any, dict[str, float]]:
    """Run r's eval metrics, after Algorithm 2's pass when bn.population is "average"."""
    del r
    if self.config.model.use_bn and self.config.bn.population == "average":
      states = self.recompute_population(states)
    return states, self.evaluate(states)


class BatchedTrainer:
  """R runs of one config family, compiled once, data in device memory.

  `devs` are the devices one run trains on (data-parallel, as Trainer). With
  `shards` > 1 the runs spread over that many rows of such devices, the first row
  being `devs`, the next ones the local devices after it (parallel.run_parallel):
  each row trains R / shards runs at the same time as the others.
  """

  def __init__(
    self,
    configs: Sequence[ml_collections.ConfigDict],
    train_ds: data.ArrayDataset,
    eval_ds: data.ArrayDataset,
    devs,
    shards: int = 1,
  ):
    check_compatible(configs)
    if shards < 1 or len(configs) % shards:
      raise ValueError(f"{len(configs)} runs do not split into {shards} rows of devices")
    self.configs = list(configs)
    unit = copy.deepcopy(configs[0])
    unit.optimizer.learning_rate = 1.0
    self.trainer = Trainer(unit, train_ds, eval_ds, devs)  # model, feed and eval
    self.devs, self.shards = list(devs), shards
    dtype = common.DTYPES[unit.dtype]
    sync = unit.model.use_bn and not unit.bn.cross_device
    chunk = lambda *a: steps_lib.train_chunk_batched(*a, dtype=dtype, sync_batch_stats=sync)
    if shards == 1:  # data_parallel's layout: no rows
      self._rows, self._mesh_devs = 0, self.devs
      self._train = parallel.data_parallel(
        chunk, self.devs, donate_argnums=(0,), backend=unit.parallel
      )
      self.dataset = self.trainer.in_memory.dataset
    else:
      self._rows, self._mesh_devs = shards, jax.local_devices()[: shards * len(self.devs)]
      if self._mesh_devs[: len(self.devs)] != self.devs:
        raise ValueError("the first row of devices must be the first local devices")
      # arguments: states, dataset, batches [dev, step, run, batch], scales, seeds
      self._train = parallel.run_parallel(
        chunk,
        self._mesh_devs,
        shards,
        in_run_axes=(1, None, 2, 1, 1),
        out_run_axes=(1, 2, 1),
        donate_argnums=(0,),
      )
      self.dataset = self._shard(jax.tree.map(np.asarray, self.trainer.in_memory.dataset), None)
    self.scales = self._replicate(
      np.array([c.optimizer.learning_rate for c in configs], np.float32), 1
    )
    self.seeds = self._replicate(np.array([c.seed for c in configs], np.int32), 1)
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0

  def initial_states(self) -> Any:
    """Each run's initial state (its own seed), stacked on a leading run axis (host)."""
    t = self.trainer
    first = t.init_state()
    states = []
    for c in self.configs:
      unit = copy.deepcopy(c)
      unit.optimizer.learning_rate = 1.0
      s = create_train_state(unit, t.model, t.feed.sample_images, t.num_train / c.batch_size)
      states.append(s.replace(tx=first.tx, apply_fn=first.apply_fn))  # one static part for all
    return stack(states)

  def _shard(self, tree: Any, run_axis: int | None) -> Any:
    """parallel.shard onto this trainer's devices and rows."""
    return parallel.shard(tree, self._mesh_devs, shards=self._rows, run_axis=run_axis)

  def _replicate(self, tree: Any, run_axis: int | None) -> Any:
    """parallel.replicate onto this trainer's devices and rows."""
    return parallel.replicate(tree, self._mesh_devs, shards=self._rows, run_axis=run_axis)

  def place(self, states: Any) -> Any:
    """Host states stacked on a run axis, put on the devices as `train` takes them."""
    return self._replicate(states, 1)

  def train(self, states, start: int, steps: int):
    """`steps` steps of every run: states, host metrics [step, run, 2], finite [run]."""
    feed = self.trainer.in_memory
    idx = np.stack(
      [
        data.train_batch_indices(feed.num_train, c.batch_size, c.seed, start, steps)
        for c in self.configs
      ],
      axis=1,
    )  # [step, run, global batch]
    n = len(self.devs)
    idx = idx.reshape(idx.shape[:2] + (n, -1)).transpose(2, 0, 1, 3)
    args = (states, self.dataset, self._shard(idx, 2), self.scales, self.seeds)
    if steps not in self._compiled:
      t = time.perf_counter()
      logging.info("compiling the batched training program (%d steps a call) ...", steps)
      self._compiled[steps] = self._train.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t
      logging.info("compiled in %.1f s", time.perf_counter() - t)
    states, metrics, finite = self._compiled[steps](*args)
    return states, np.asarray(metrics[0]), np.asarray(finite[0])

  def compiled(self, steps: int) -> Any:
    """The compiled program of a chunk of `steps` steps (after a chunk that long has run)."""
    return self._compiled[steps]

  def evaluate(self, states, run: int) -> dict[str, float]:
    seed = self.configs[run].seed  # the probe's batches: those of the run alone
    if self.shards == 1:
      return self.trainer.evaluate(jax.tree.map(lambda x: x[:, run], states), seed)
    # run's row may be another one: bring its state over to the evaluating devices
    one = jax.tree.map(lambda x: np.asarray(x[:, run]), states)
    return self.trainer.evaluate(parallel.shard(one, self.devs), seed)

  def host_run(self, states: Any, r: int) -> TrainState:
    return run_of(states, r)

  def host_with(self, runs: Sequence[TrainState]) -> Any:
    return stack(runs)

  def device_run(self, states: Any, r: int) -> TrainState:
    return jax.tree.map(lambda x: np.asarray(x[0, r]), states)

  def train_runs(self, states: Any, start: int, steps: int) -> tuple[Any, np.ndarray, np.ndarray]:
    return self.train(states, start, steps)

  def evaluate_run(self, states: Any, r: int) -> tuple[Any, dict[str, float]]:
    return states, self.evaluate(states, r)

  def close(self) -> None:
    self.trainer.close()


def run_of(states: Any, r: int) -> Any:
  """Run r's part of a tree stacked on a leading run axis (arrays, also where 0-d:
  Orbax takes no NumPy scalars)."""
  return jax.tree.map(lambda x: np.asarray(x[r]), states)


def stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure stacked on a new leading run axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def check_compatible(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Refuses runs that differ in anything but VARYING (they could not share one program)."""
  base = fields.flatten(configs[0].to_dict())
  for i, c in enumerate(configs[1:], 1):
    other = fields.flatten(c.to_dict())
    differ = sorted(
      k for k in set(base) | set(other) if k not in VARYING and base.get(k) != other.get(k)
    )
    if differ:
      raise UserError(
        f"run {i} differs from run 0 in {', '.join(differ)}; batched runs may "
        f"differ only in {', '.join(VARYING)}",
        field="batched runs",
      )


def check_batchable(config: ml_collections.ConfigDict) -> None:
  """Refuses a config whose single run does what the batched loop does not (its files
  would differ): data streamed from the host, Algorithm 2's population pass, a profile."""
  if config.data.name in data.STREAMED:
    raise UserError(
      f"{config.data.name} is streamed from the host; batched runs need a "
      "dataset held in device memory: train it alone",
      field="config.data.name",
    )
  if config.model.use_bn and config.bn.population == "average":
    raise UserError(
      "batched runs keep EMA population statistics only; train an 'average' "
      "(Algorithm 2) run alone",
      field="config.bn.population",
    )
  if config.profile_start_step >= 0 and config.profile_num_steps > 0:
    raise UserError(
      "batched runs are not profiled; train a profiled run alone", field="config.profile_num_steps"
    )
