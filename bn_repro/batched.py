"""Several runs of one model in one compiled program: a vmap over a run axis.

Runs may differ in `seed` (initialization, data order, dropout) and
`optimizer.learning_rate` only, so that every run has the same shapes. Each run
keeps its own workdir exactly as a single run writes it (config.json,
status.json, metrics.jsonl, checkpoints/), locked, checked and resumed with
train.py's own guards, and a run that diverges is recorded and stops being
logged while the others go on; `steps_per_sec` is the group's (every run
advances at that rate). The learning rate enters as a per-run factor on the
update of an optimizer built for learning rate 1, which is the same SGD (with
momentum, weight decay and a decay schedule) as long as the factor is constant.
What a single run does and this loop does not (streamed data, Algorithm 2's
population pass, profiling) is refused by `check_batchable`.

The runs spread over rows of devices where the process has more than one run
needs (parallel.run_shards): each row trains its share of the runs, data-parallel
over the devices a run alone would use. On a CPU host, parallel.add_cpu_devices
makes one device per core, so that a group trains on every core at once.

  from bn_repro import batched, parallel
  parallel.add_cpu_devices()  # before JAX starts; CPU hosts only, harmless elsewhere
  batched.train_batched([config_seed0, config_seed1, ...], ["runs/s0", "runs/s1", ...])

The sweep runner trains groups of points this way with `--batched` (bn_repro/sweep.py).
"""

import contextlib
import copy
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax import lax

from bn_repro import data, parallel, train, validation
from bn_repro.errors import UserError
from bn_repro.models import common
from bn_repro.rundir import RunDir, write_json

VARYING = ("seed", "optimizer.learning_rate")


def check_compatible(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Refuses runs that differ in anything but VARYING (they could not share one program)."""
  base = train.flat_config(configs[0])
  for i, c in enumerate(configs[1:], 1):
    other = train.flat_config(c)
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


def train_chunk_batched(states, dataset, batches, scales, seeds, *, dtype, sync_batch_stats):
  """len(batches) steps of R runs: batches [step, run, example] indices into `dataset`."""

  def one(state, idx, scale, seed):
    return train.train_step(
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
  return states, metrics, jax.vmap(train.all_finite)(states)


def _run(states: Any, r: int) -> Any:
  """Run r's part of a tree stacked on a leading run axis (arrays, also where 0-d:
  Orbax takes no NumPy scalars)."""
  return jax.tree.map(lambda x: np.asarray(x[r]), states)


def _stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure stacked on a new leading run axis."""
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


class BatchedTrainer:
  """R runs of one config family, compiled once, data in device memory.

  `devs` are the devices one run trains on (data-parallel, as train.Trainer). With
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
    self.trainer = train.Trainer(unit, train_ds, eval_ds, devs)  # model, feed and eval
    self.devs, self.shards = list(devs), shards
    dtype = common.DTYPES[unit.dtype]
    sync = unit.model.use_bn and not unit.bn.cross_device
    chunk = lambda *a: train_chunk_batched(*a, dtype=dtype, sync_batch_stats=sync)
    if shards == 1:  # data_parallel's layout: no rows
      self._rows, self._mesh_devs = 0, self.devs
      self._train = parallel.data_parallel(
        chunk, self.devs, donate_argnums=(0,), backend=unit.parallel
      )
      self.dataset = self.trainer.feed.dataset
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
      self.dataset = self._shard(jax.tree.map(np.asarray, self.trainer.feed.dataset), None)
    self.scales = self._replicate(
      np.array([c.optimizer.learning_rate for c in configs], np.float32), 1
    )
    self.seeds = self._replicate(np.array([c.seed for c in configs], np.int32), 1)
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0

  def init_states(self) -> Any:
    """Each run's initial state (its own seed), stacked on a leading run axis (host)."""
    t = self.trainer
    first = t.init_state()
    states = []
    for c in self.configs:
      unit = copy.deepcopy(c)
      unit.optimizer.learning_rate = 1.0
      s = train.create_train_state(unit, t.model, t.feed.sample_images, t.num_train / c.batch_size)
      states.append(s.replace(tx=first.tx, apply_fn=first.apply_fn))  # one static part for all
    return _stack(states)

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
    feed = self.trainer.feed
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
      self._compiled[steps] = self._train.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t
    states, metrics, finite = self._compiled[steps](*args)
    return states, np.asarray(metrics[0]), np.asarray(finite[0])

  def evaluate(self, states, run: int) -> dict[str, float]:
    if self.shards == 1:
      return self.trainer.evaluate(jax.tree.map(lambda x: x[:, run], states))
    # run's row may be another one: bring its state over to the evaluating devices
    one = jax.tree.map(lambda x: np.asarray(x[:, run]), states)
    return self.trainer.evaluate(parallel.shard(one, self.devs))


def train_batched(
  configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], spread: bool = True
) -> list[str]:
  """Trains the runs together; returns each run's final status ("done" / "diverged").

  The runs train on the devices a single run uses; with `spread`, as many rows of
  such devices as the local ones hold (parallel.run_shards) share them out. On a
  CPU host call parallel.add_cpu_devices first for one device per core (the sweep
  runner's --batched does).

  Each workdir is checked, locked and written as train.train_and_evaluate does for
  one run. The runs resume together from their latest checkpoints, which must be at
  one step (the sweep runner groups points that way). Raises UserError for bad input
  and train.Stopped after SIGTERM/SIGINT, when every run still training has saved a
  checkpoint and says "stopped".
  """
  if len(configs) != len(workdirs) or not configs:
    raise UserError("give one workdir per config", field="workdirs")
  for c in configs:
    validation.validate(c)
    check_batchable(c)
  devs = parallel.devices(configs[0].num_devices)
  validation.validate_devices(configs[0], len(devs))
  train_ds, eval_ds = data.load_splits(configs[0].data)
  validation.validate_data(configs[0], train_ds, eval_ds)
  # train.py's guards, so that a batched run refuses, locks and resumes as a single one.
  # pylint: disable=protected-access
  for c, w in zip(configs, workdirs):
    train._check_saved_config(w, c)
  shards = parallel.run_shards(len(configs), len(devs)) if spread else 1
  bt = BatchedTrainer(configs, train_ds, eval_ds, devs, shards)
  logging.info("%d batched runs on %d row(s) of %d device(s)", len(configs), shards, len(devs))
  states = bt.init_states()
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      stack.enter_context(train._exclusive_workdir(w))
      train._check_disk(w, _run(states, 0))
    signals = stack.enter_context(train._StopSignals())
    mgrs = [train.checkpoint_manager(w) for w in workdirs]

    def close_managers() -> None:
      for m in mgrs:
        m.wait_until_finished()
        m.close()

    stack.callback(close_managers)
    restored = [
      train._restore(m, train.to_checkpoint(_run(states, r), c), fallback=False)
      for r, (m, c) in enumerate(zip(mgrs, configs))
    ]
    # pylint: enable=protected-access
    if len({s for s, _ in restored}) > 1:
      steps = ", ".join(f"{w} at step {s}" for w, (s, _) in zip(workdirs, restored))
      raise UserError(
        f"the runs' latest checkpoints differ ({steps}); batched runs resume "
        "together from one step: resume these runs one at a time",
        field="workdirs",
      )
    start = restored[0][0]
    if start:
      states = _stack(
        [
          _run(states, r).replace(
            step=t["step"],
            params=t["params"],
            batch_stats=t["batch_stats"],
            opt_state=t["opt_state"],
          )
          for r, (_, t) in enumerate(restored)
        ]
      )
      logging.info("Resumed %d batched runs from step %d", len(configs), start)
    writers, target_open = [], []
    for c, w in zip(configs, workdirs):
      write_json(os.path.join(w, train.CONFIG_FILE), c.to_dict())
      write_json(os.path.join(w, train.STATUS_FILE), {"status": "running", "step": start})
      writer = stack.enter_context(contextlib.closing(RunDir(w).metric_writer(c.tensorboard)))
      writer.truncate_after(start or -1)
      writers.append(writer)
      target_open.append(
        c.target_accuracy > 0
        and not any("target/reached" in e for e in (RunDir(w).metrics() if start else []))
      )
    status = ["running"] * len(configs)
    states = bt.place(states)
    config = configs[0]
    step = start

    def set_status(r: int, **fields) -> None:
      status[r] = fields["status"]
      write_json(os.path.join(workdirs[r], train.STATUS_FILE), fields)

    def diverge(r: int, at: int) -> None:
      set_status(r, status="diverged", step=at)
      writers[r].write(at, {"diverged": True})

    def evaluate(r: int) -> dict[str, float] | None:
      """Run r's eval metrics, or None after recording it diverged (not finite)."""
      evals = bt.evaluate(states, r)
      if all(math.isfinite(v) for v in evals.values()):
        return evals
      diverge(r, step)
      return None

    if start == 0 and config.eval_every > 0:
      for r, w in enumerate(writers):
        evals = evaluate(r)
        if evals is not None:
          w.write(0, evals)
    while step < config.num_steps and "running" in status:
      stop = train.next_stop(step, config)
      t, compile_before = time.perf_counter(), bt.compile_seconds
      states, metrics, finite = bt.train(states, step, stop - step)
      compiled = bt.compile_seconds - compile_before
      rate = (stop - step) / max(time.perf_counter() - t - compiled, 1e-9)
      for r in range(len(configs)):
        loss = metrics[:, r, 0]
        bad = np.flatnonzero(
          ~np.isfinite(loss) | ((config.max_loss > 0) & (loss > config.max_loss))
        )
        if status[r] == "running" and (bad.size or not finite[r]):
          diverge(r, step + (int(bad[0]) + 1 if bad.size else stop - step))
      step = stop
      stop_signal = signals.agreed()  # read once: every run saves and stops at this step, or none
      for r, (c, w, mgr) in enumerate(zip(configs, writers, mgrs)):
        if status[r] != "running":
          continue
        scalars = {}
        if train.is_due(step, config.log_every, config.num_steps):
          scalars = {
            "train/loss": float(metrics[:, r, 0].mean()),
            "train/accuracy": float(metrics[:, r, 1].mean()),
            "steps_per_sec": rate,
          }
          if compiled:
            scalars["compile_seconds"] = compiled
        if train.is_due(step, config.eval_every, config.num_steps):
          evals = evaluate(r)
          if evals is None:
            continue
          scalars.update(evals)
          if target_open[r] and evals["eval/accuracy"] >= c.target_accuracy:
            scalars["target/reached"] = c.target_accuracy  # first step at the target
            target_open[r] = False
        if scalars:
          w.write(step, scalars)
        if train.is_due(step, config.checkpoint_every, config.num_steps) or stop_signal:
          run_state = jax.tree.map(lambda x, r=r: np.asarray(x[0, r]), states)
          mgr.save(step, args=ocp.args.StandardSave(train.to_checkpoint(run_state, c)))
        if stop_signal and step < config.num_steps:
          w.flush()
          set_status(r, status="stopped", step=step)
      logging.info(
        "step %d/%d  %d runs training, %d diverged  %.4g steps/s",
        step,
        config.num_steps,
        status.count("running"),
        status.count("diverged"),
        rate,
      )
      if stop_signal and step < config.num_steps:
        raise train.Stopped(step, stop_signal)
    for r in range(len(configs)):
      if status[r] == "running":
        set_status(r, status="done", step=step)
  return status
