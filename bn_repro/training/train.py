"""The front doors: train one run (`train_and_evaluate`) or R runs together (`train_batched`).

Both check the input before anything is written, open each run directory (lock, disk
space, config drift, checkpoints, resume from the latest one, metric sink) and hand the
runs to the one loop (bn_repro.training.loop):

  from bn_repro import configs, training
  training.train_and_evaluate(configs.get("mnist_mlp:bn_sigmoid,t10k"), "runs/bn")

  from bn_repro import parallel
  parallel.add_cpu_devices()  # before JAX starts; CPU hosts only, harmless elsewhere
  training.train_batched([config_seed0, config_seed1, ...], ["runs/s0", "runs/s1", ...])
"""

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from bn_repro import checkpoints, compile_cache, data, parallel, placement, validation
from bn_repro.errors import UserError
from bn_repro.metrics import NullWriter
from bn_repro.rundir import RunDir
from bn_repro.signals import StopSignals
from bn_repro.training import console
from bn_repro.training.console import RunResult
from bn_repro.training.engine import BatchedTrainer, Trainer, check_batchable
from bn_repro.training.loop import Loop, Run

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = (
  "num_steps",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "tensorboard",
  "num_devices",
  "cpu_cores",
  "compilation_cache",
  "steps_per_call",
  "call_seconds",
  "profile_start_step",
  "profile_num_steps",
)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  fallback_checkpoint: bool = False,
  allow_config_change: bool = False,
) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a RunResult
  (status, step, the last metrics, the workdir).

  Prints a start block before compiling, progress every config.log_every steps and a
  summary at the end (through absl logging; in a notebook, on stdout). Raises UserError
  for bad input (before anything is written), Diverged when the loss, the parameters or
  the BN statistics stop being finite (after recording status "diverged"; the last
  checkpoint is the last good state) and Stopped after SIGTERM/SIGINT (after saving a
  checkpoint).

  Args:
    config: the experiment.
    workdir: where checkpoints, metrics and the config and status go (bn_repro.rundir);
      one run at a time.
    fallback_checkpoint: if the newest checkpoint cannot be restored, use the newest
      one that can (otherwise that is an error).
    allow_config_change: resume even if the saved config differs from `config`.
  """
  t = time.perf_counter()
  with console.show_progress():
    validation.validate(config)
    where = placement.apply(config)  # before JAX starts its CPU client
    run = RunDir(workdir)
    run.check_not_a_file()
    check_not_past_end(run, config)
    devs = parallel.run_devices(config)
    validation.validate_devices(config, len(devs), jax.process_count())
    if config.data.name in data.STREAMED:
      train_ds = eval_ds = None
    else:
      train_ds, eval_ds = data.load_splits(config.data)
      validation.validate_data(config, train_ds, eval_ds)
    if not allow_config_change:
      run.check_config(config.to_dict(), RESUMABLE_CHANGES)
    sizes = None if train_ds is None or eval_ds is None else (len(train_ds), len(eval_ds))
    extra = [where, compile_cache.configure(config.get("compilation_cache", "auto"))]
    primary = jax.process_index() == 0
    if primary:
      run.create()  # an unwritable workdir is one line, before the start block
      console.log_lines(console.start_block(config, run, devs, jax.process_count(), sizes, extra))
      logging.info("building the model's state ...")
    engine = Trainer(config, train_ds, eval_ds, devs)
    (last,) = _train(engine, [run], fallback_checkpoint, raise_divergence=True)
    step = int(last.last.get("step", run.status().get("step", 0)))
    metrics = {k: v for k, v in _final_events(run, step).items() if k != "step"}
    result = RunResult(str(run), last.status, step, metrics, time.perf_counter() - t)
    if primary:
      console.log_lines(console.summary(result, config, engine.compile_seconds))
  return result


def _final_events(run: RunDir, step: int) -> dict[str, Any]:
  """The metrics written at `step`, merged (a finished run rerun trains nothing)."""
  events = run.metrics() if run.has_metrics() else []
  return {k: v for e in events if e["step"] == step for k, v in e.items()}


def check_not_past_end(run: RunDir, config: ml_collections.ConfigDict) -> None:
  """Refuses a num_steps below the step the run has reached: config.json would say one
  thing and status.json and the checkpoints another."""
  step = run.latest_checkpoint()
  if step is not None and step > config.num_steps:
    raise UserError(
      f"{run} holds a run trained to step {step}, past num_steps={config.num_steps}; "
      f"rerun with --config.num_steps={step} or more (it resumes from there), or use a "
      "new --workdir",
      field="config.num_steps",
    )


def train_batched(
  configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], spread: bool = True
) -> list[str]:
  """Trains the runs together; returns each run's final status ("done" / "diverged").

  The runs may differ in engine.VARYING only, train on the devices a single run uses
  and, with `spread`, on as many rows of such devices as the local ones hold
  (parallel.run_shards). On a CPU host call parallel.add_cpu_devices first for one
  device per core (the sweep runner's --batched does).

  Each run directory is checked, locked and written as a single run's. The runs resume
  together from their latest checkpoints, which must be at one step (the sweep runner
  groups points that way); a run that diverges is recorded and stops while the others
  go on. Raises UserError for bad input and Stopped after SIGTERM/SIGINT, when every
  run still training has saved a checkpoint and says "stopped".
  """
  if len(configs) != len(workdirs) or not configs:
    raise UserError("give one workdir per config", field="workdirs")
  for c in configs:
    validation.validate(c)
    check_batchable(c)
  logging.info("%s", placement.apply(configs[0], runs=len(configs)))
  logging.info("%s", compile_cache.configure(configs[0].get("compilation_cache", "auto")))
  if jax.process_count() > 1:
    raise UserError("batched runs train in one process; train each run alone", field="workdirs")
  devs = parallel.run_devices(configs[0])
  validation.validate_devices(configs[0], len(devs))
  train_ds, eval_ds = data.load_splits(configs[0].data)
  validation.validate_data(configs[0], train_ds, eval_ds)
  runs = [RunDir(w) for w in workdirs]
  for c, run in zip(configs, runs):
    run.check_not_a_file()
    check_not_past_end(run, c)
    run.check_config(c.to_dict(), RESUMABLE_CHANGES)
  shards = parallel.run_shards(len(configs), len(devs)) if spread else 1
  engine = BatchedTrainer(configs, train_ds, eval_ds, devs, shards)
  logging.info("%d batched runs on %d row(s) of %d device(s)", len(configs), shards, len(devs))
  return [r.status for r in _train(engine, runs, fallback=False, raise_divergence=False)]


def _state_bytes(state: Any) -> int:
  leaves = jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
  return sum(np.asarray(x).nbytes for x in leaves)


def _train(engine: Any, dirs: list[RunDir], fallback: bool, raise_divergence: bool) -> list[Run]:
  """Opens the run directories, resumes, trains to the end; returns the runs."""
  primary = jax.process_index() == 0  # the one process that writes the run directories
  states = engine.initial_states()
  with contextlib.ExitStack() as stack:
    stack.callback(engine.close)  # the data feed's threads, however the run ends
    if primary:
      for r, run_dir in enumerate(dirs):
        stack.enter_context(run_dir.exclusive())
        run_dir.check_disk(_state_bytes(engine.host_run(states, r)))
    signals = stack.enter_context(StopSignals())
    mgrs = [checkpoints.manager(d) for d in dirs]

    @stack.callback
    def close_managers() -> None:
      for m in mgrs:
        m.wait_until_finished()
        m.close()

    try:
      runs, states, start = _resume(engine, dirs, mgrs, states, fallback, primary)
      for run in runs:
        stack.callback(run.writer.close)
      Loop(engine, runs, signals, raise_divergence).run(engine.place(states), start)
    except OSError as e:
      where = ", ".join(str(d) for d in dirs)
      raise UserError(
        f"writing to {where} failed ({e.strerror or e}); the last checkpoint "
        f"is step {mgrs[0].latest_step()}; fix it and rerun to resume",
        field="--workdir",
      ) from None
  return runs


def _resume(
  engine: Any, dirs: list[RunDir], mgrs: list, states: Any, fallback: bool, primary: bool
) -> tuple[list[Run], Any, int]:
  """Each run's latest checkpoint restored into `states`; its files opened for the loop."""
  configs = engine.configs
  restored = [
    checkpoints.restore(m, checkpoints.to_checkpoint(engine.host_run(states, r), c), fallback)
    for r, (m, c) in enumerate(zip(mgrs, configs))
  ]
  if len({step for step, _ in restored}) > 1:
    steps = ", ".join(f"{d} at step {s}" for d, (s, _) in zip(dirs, restored))
    raise UserError(
      f"the runs' latest checkpoints differ ({steps}); batched runs resume "
      "together from one step: resume these runs one at a time",
      field="workdirs",
    )
  start = restored[0][0]
  runs = []
  for c, d, m in zip(configs, dirs, mgrs):
    if primary:
      d.write_config(c.to_dict())
      d.write_status("running", step=start)
    writer = d.metric_writer(c.tensorboard) if primary else NullWriter()
    writer.truncate_after(start if start else -1)  # events past the checkpoint
    writer.write_config(c.to_dict())
    # Figure 3's "steps to reach accuracy X": written once, at the first eval that gets there.
    target_open = (
      primary
      and c.target_accuracy > 0
      and not any("target/reached" in e for e in (d.metrics() if start else []))
    )
    runs.append(Run(c, d, m, writer, primary=primary, target_open=target_open))
  if start:
    states = engine.host_with(
      [
        checkpoints.from_checkpoint(engine.host_run(states, r), t)
        for r, (_, t) in enumerate(restored)
      ]
    )
    if len(dirs) == 1:
      logging.info("Resumed from the checkpoint at step %d in %s", start, dirs[0])
    else:
      logging.info("Resumed %d batched runs from step %d", len(dirs), start)
  return runs, states, start
