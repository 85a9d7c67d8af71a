"""Several runs of one model in one compiled program: a vmap over a run axis.

Runs may differ in `seed` (initialization, data order, dropout) and
`optimizer.learning_rate` only, so that every run has the same shapes. Each run
keeps its own workdir exactly as a single run writes it (config.json,
status.json, metrics.jsonl, checkpoints/), and a run that diverges is recorded
and stops being logged while the others go on. The learning rate enters as a
per-run factor on the update of an optimizer built for learning rate 1, which is
the same SGD (with momentum, weight decay and a decay schedule) as long as the
factor is constant.

  from bn_repro import batched
  batched.train_batched([config_seed0, config_seed1, ...], ["runs/s0", "runs/s1", ...])
"""

import copy
import os
from typing import Any, Sequence

from absl import logging
import jax
from jax import lax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bn_repro import data
from bn_repro import parallel
from bn_repro import train
from bn_repro import validation
from bn_repro.models import common
from bn_repro.errors import UserError
from bn_repro.metrics import MetricWriter, write_json

VARYING = ("seed", "optimizer.learning_rate")


def check_compatible(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Refuses runs that differ in anything but VARYING (they could not share one program)."""
  base = train.flat_config(configs[0])
  for i, c in enumerate(configs[1:], 1):
    other = train.flat_config(c)
    differ = sorted(k for k in set(base) | set(other)
                    if k not in VARYING and base.get(k) != other.get(k))
    if differ:
      raise UserError(f"run {i} differs from run 0 in {', '.join(differ)}; batched runs may "
                      f"differ only in {', '.join(VARYING)}", field="batched runs")


def train_chunk_batched(states, dataset, batches, scales, seeds, *, dtype, sync_batch_stats):
  """len(batches) steps of R runs: batches [step, run, example] indices into `dataset`."""

  def one(state, idx, scale, seed):
    return train.train_step(state, dataset[0][idx], dataset[1][idx], dtype=dtype,
                            sync_batch_stats=sync_batch_stats, seed=seed, update_scale=scale)

  def body(states, idx):
    return jax.vmap(one)(states, idx, scales, seeds)

  states, metrics = lax.scan(body, states, batches)
  return states, metrics, jax.vmap(train.all_finite)(states)


class BatchedTrainer:
  """R runs of one config family, compiled once, data in device memory."""

  def __init__(self, configs: Sequence[ml_collections.ConfigDict], train_ds: data.ArrayDataset,
               eval_ds: data.ArrayDataset, devs):
    check_compatible(configs)
    self.configs = list(configs)
    unit = copy.deepcopy(configs[0])
    unit.optimizer.learning_rate = 1.0
    self.trainer = train.Trainer(unit, train_ds, eval_ds, devs)  # model, feed and eval
    self.devs = devs
    self.scales = parallel.replicate(
        np.array([c.optimizer.learning_rate for c in configs], np.float32), devs)
    self.seeds = parallel.replicate(np.array([c.seed for c in configs], np.int32), devs)
    dtype = common.DTYPES[unit.dtype]
    sync = unit.model.use_bn and not unit.bn.cross_device
    self._train = parallel.data_parallel(
        lambda *a: train_chunk_batched(*a, dtype=dtype, sync_batch_stats=sync), devs,
        donate_argnums=(0,), backend=unit.parallel)
    self._compiled: dict[int, Any] = {}

  def init_states(self) -> Any:
    """Each run's initial state (its own seed), stacked on a leading run axis."""
    t = self.trainer
    first = t.init_state()
    states = []
    for c in self.configs:
      unit = copy.deepcopy(c)
      unit.optimizer.learning_rate = 1.0
      s = train.create_train_state(unit, t.model, t.feed.sample_images, t.num_train / c.batch_size)
      states.append(s.replace(tx=first.tx, apply_fn=first.apply_fn))  # one static part for all
    return jax.tree.map(lambda *xs: np.stack(xs), *states)

  def train(self, states, start: int, steps: int):
    """`steps` steps of every run: states, host metrics [step, run, 2], finite [run]."""
    feed = self.trainer.feed
    idx = np.stack([data.train_batch_indices(feed.num_train, c.batch_size, c.seed, start, steps)
                    for c in self.configs], axis=1)  # [step, run, global batch]
    n = len(self.devs)
    idx = idx.reshape(idx.shape[:2] + (n, -1)).transpose(2, 0, 1, 3)
    args = (states, feed.dataset, parallel.shard(idx, self.devs), self.scales, self.seeds)
    if steps not in self._compiled:
      self._compiled[steps] = self._train.lower(*args).compile()
    states, metrics, finite = self._compiled[steps](*args)
    return states, np.asarray(metrics[0]), np.asarray(finite[0])

  def evaluate(self, states, run: int) -> dict[str, float]:
    return self.trainer.evaluate(jax.tree.map(lambda x: x[:, run], states))


def train_batched(configs: Sequence[ml_collections.ConfigDict],
                  workdirs: Sequence[str]) -> list[str]:
  """Trains the runs together; returns each run's final status ("done" / "diverged").

  Each workdir gets what a single run writes; runs resume together when every
  workdir holds a checkpoint at the same step.
  """
  if len(configs) != len(workdirs) or not configs:
    raise UserError("give one workdir per config", field="workdirs")
  for c in configs:
    validation.validate(c)
  devs = parallel.devices(configs[0].num_devices)
  validation.validate_devices(configs[0], len(devs))
  train_ds, eval_ds = data.load_splits(configs[0].data)
  validation.validate_data(configs[0], train_ds, eval_ds)
  bt = BatchedTrainer(configs, train_ds, eval_ds, devs)
  states = bt.init_states()
  config = configs[0]
  mgrs = [train.checkpoint_manager(w) for w in workdirs]
  starts = {m.latest_step() for m in mgrs}
  start = starts.pop() if len(starts) == 1 and None not in starts else 0
  if start:
    restored = [m.restore(start, args=ocp.args.StandardRestore(
        train.to_checkpoint(jax.tree.map(lambda x, i=i: x[i], states), c)))
                for i, (m, c) in enumerate(zip(mgrs, configs))]
    states = jax.tree.map(lambda *xs: np.stack(xs), *[
        jax.tree.map(lambda x, i=i: x[i], states).replace(
            step=r["step"], params=r["params"], batch_stats=r["batch_stats"],
            opt_state=r["opt_state"]) for i, r in enumerate(restored)])
    logging.info("Resumed %d batched runs from step %d", len(configs), start)
  writers = []
  for c, w in zip(configs, workdirs):
    write_json(os.path.join(w, train.CONFIG_FILE), c.to_dict())
    writer = MetricWriter(w, tensorboard=c.tensorboard)
    writer.truncate_after(start if start else -1)
    writers.append(writer)
  status = ["running"] * len(configs)
  states = parallel.replicate(states, devs)
  step = start
  try:
    if start == 0 and config.eval_every > 0:
      for r, w in enumerate(writers):
        w.write(0, bt.evaluate(states, r))
    while step < config.num_steps and "running" in status:
      stop = train.next_stop(step, config)
      states, metrics, finite = bt.train(states, step, stop - step)
      for r in range(len(configs)):
        loss = metrics[:, r, 0]
        bad = np.flatnonzero(~np.isfinite(loss) | ((config.max_loss > 0) & (loss > config.max_loss)))
        if status[r] == "running" and (bad.size or not finite[r]):
          at = step + (int(bad[0]) + 1 if bad.size else stop - step)
          status[r] = "diverged"
          write_json(os.path.join(workdirs[r], train.STATUS_FILE),
                            {"status": "diverged", "step": at})
          writers[r].write(at, {"diverged": True})
      step = stop
      for r, (w, mgr) in enumerate(zip(writers, mgrs)):
        if status[r] != "running":
          continue
        scalars = {}
        if train.is_due(step, config.log_every, config.num_steps):
          scalars = {"train/loss": float(metrics[:, r, 0].mean()),
                     "train/accuracy": float(metrics[:, r, 1].mean())}
        if train.is_due(step, config.eval_every, config.num_steps):
          scalars.update(bt.evaluate(states, r))
        if scalars:
          w.write(step, scalars)
        if train.is_due(step, config.checkpoint_every, config.num_steps):
          run_state = jax.tree.map(lambda x, r=r: np.asarray(x[0, r]), states)
          mgr.save(step, args=ocp.args.StandardSave(
              train.to_checkpoint(run_state, configs[r])))
  finally:
    for w, mgr in zip(writers, mgrs):
      mgr.wait_until_finished()
      mgr.close()
      w.close()
  for r, w in enumerate(workdirs):
    if status[r] == "running":
      status[r] = "done"
      write_json(os.path.join(w, train.STATUS_FILE), {"status": "done", "step": step})
  return status
