"""The training loop: one loop for R >= 1 runs of one engine (bn_repro.training.engine).

Chunks of steps run between the points where something happens (log, eval, checkpoint,
the end: `next_stop`), each in device calls that `CallPlan` keeps to about
config.call_seconds (and at most config.steps_per_call steps); a stop signal is acted on
after the call in progress, so within about call_seconds of its arrival (plus an
evaluation due at that step and the checkpoint's save) once a call has been timed; a call
that compiles (the first of each length) takes longer. After each chunk the loop checks
every run for divergence (a loss or the final parameters and BN statistics not finite, or
a loss above max_loss), logs, evaluates (recording the first step that reaches
config.target_accuracy), saves checkpoints, and honours a stop signal (checkpoint, status
"stopped", `Stopped`). A run that diverges gets status "diverged" and a {"diverged": true}
event at the first bad step; with `raise_divergence` (a single run) the loop then raises
`Diverged`, otherwise the other runs go on. Only process 0 writes.
"""

import dataclasses
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from bn_repro import checkpoints
from bn_repro.metrics import MetricWriter, NullWriter
from bn_repro.rundir import RunDir
from bn_repro.signals import StopSignals


class Diverged(Exception):
  """The loss or the BN statistics stopped being finite; `step` is the first bad step."""

  def __init__(self, step: int):
    self.step = step
    super().__init__(f"diverged at step {step}")


class Stopped(Exception):
  """A SIGTERM/SIGINT stopped the run after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"stopped by signal {signum} at step {step}")


def is_due(step: int, every: int, last: int) -> bool:
  """Whether something done every `every` steps (0: never) happens at `step`; always at `last`."""
  return step == last or (every > 0 and step % every == 0)


def next_stop(step: int, config: ml_collections.ConfigDict) -> int:
  """The next step at which something happens: log, eval, checkpoint or the end."""
  stops = [config.num_steps]
  for every in (config.log_every, config.eval_every, config.checkpoint_every):
    if every > 0:
      stops.append((step // every + 1) * every)
  return min(stops)


class CallPlan:
  """How a chunk of steps splits into device calls: calls of at most `max_steps`, which is
  config.steps_per_call (0: no cap) until a call has been timed, then also the steps that
  take config.call_seconds at the measured rate (0 s: no limit). A chunk splits into equal
  calls (lengths differing by at most one), so that few programs are compiled."""

  def __init__(self, config: ml_collections.ConfigDict, agree: bool = False):
    self.seconds = config.call_seconds
    self.cap = config.steps_per_call
    self.max_steps = self.cap
    self.timed = False
    self.agree = agree  # several processes: process 0's measurement decides for all

  def lengths(self, steps: int) -> list[int]:
    if not self.max_steps or steps <= self.max_steps:
      return [steps]
    calls = -(-steps // self.max_steps)
    return [steps // calls + (i < steps % calls) for i in range(calls)]

  def observe(self, steps: int, seconds: float) -> None:
    """A call of `steps` steps took `seconds` (without compilation). Decided once (with
    several processes, on the same call everywhere); again when a call takes more than twice
    call_seconds (one process only)."""
    if self.seconds <= 0 or (self.timed and (self.agree or seconds <= 2 * self.seconds)):
      return
    fit = max(1, math.floor(self.seconds * steps / max(seconds, 1e-9)))
    if self.agree:
      fit = int(multihost_utils.broadcast_one_to_all(np.int32(min(fit, 2**30))))
    self.timed = True
    self.max_steps = min(fit, self.cap) if self.cap else fit


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def first_bad_step(loss: np.ndarray, finite: bool, max_loss: float) -> int | None:
  """1-based index in the chunk of the first diverged step (len(loss) when only the final
  state is bad), or None."""
  bad = np.flatnonzero(~np.isfinite(loss) | ((max_loss > 0) & (loss > max_loss)))
  if bad.size:
    return int(bad[0]) + 1
  return None if finite else len(loss)


@dataclasses.dataclass
class Run:
  """One run of the loop: its config, directory, checkpoints, metric sink and status."""

  config: ml_collections.ConfigDict
  dir: RunDir
  mgr: ocp.CheckpointManager
  writer: MetricWriter | NullWriter
  primary: bool = True  # this process writes the run's files
  status: str = "running"
  target_open: bool = False  # config.target_accuracy not reached yet
  last: dict[str, Any] = dataclasses.field(default_factory=dict)  # the last scalars written

  def set_status(self, status: str, step: int) -> None:
    self.status = status
    if self.primary:
      self.dir.write_status(status, step=step)


class Profiler:
  """A jax.profiler trace of the chunks that start in [profile_start_step, + profile_num_steps).

  Traces go to the run's profile/ folder (open with TensorBoard's profile plugin or
  Perfetto). Windows are rounded to chunk boundaries: a chunk runs many steps in one call.
  """

  def __init__(self, config: ml_collections.ConfigDict, run: RunDir):
    self.start = config.profile_start_step
    self.end = self.start + config.profile_num_steps
    self.logdir = str(run.profile_dir)
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


class Loop:
  """Trains `runs` with `engine` from `start` to config.num_steps (the runs share it)."""

  def __init__(self, engine: Any, runs: list[Run], signals: StopSignals, raise_divergence: bool):
    self.engine, self.runs, self.signals = engine, runs, signals
    self.raise_divergence = raise_divergence
    self.config = runs[0].config  # the schedule every run shares
    self.plan = CallPlan(self.config, agree=jax.process_count() > 1)
    # Wall seconds by activity: training (without compiling), evaluations (their compile
    # included), checkpoints; logged at the end.
    self.seconds = {"train": 0.0, "eval": 0.0, "checkpoints": 0.0}
    self.evaluated = False  # whether an evaluation has run (and so compiled) in this process

  def diverge(self, r: int, at: int) -> None:
    run = self.runs[r]
    run.set_status("diverged", at)
    run.writer.write(at, {"diverged": True})
    if self.raise_divergence:
      raise Diverged(at)

  def evaluate(self, states: Any, r: int, step: int) -> tuple[Any, dict[str, float] | None]:
    """Run r's eval metrics, or None after recording that they are not finite."""
    t = time.perf_counter()
    if not self.evaluated:
      logging.info("compiling the evaluation (step %d) ...", step)
    states, evals = self.engine.evaluate_run(states, r)
    self.seconds["eval"] += time.perf_counter() - t
    if not self.evaluated:
      logging.info("compiled and ran the evaluation in %.1f s", time.perf_counter() - t)
      self.evaluated = True
    if all(math.isfinite(v) for v in evals.values()):
      return states, evals
    self.diverge(r, step)
    return states, None

  def train_chunk(self, states: Any, step: int, stop: int) -> tuple[Any, int, np.ndarray, Any]:
    """Trains from `step` towards `stop` in the plan's calls, stopping after a call when a
    stop signal is pending: states, the step reached, metrics [steps, R, 2], finite [R]."""
    engine, parts, finite = self.engine, [], None
    for i, n in enumerate(self.plan.lengths(stop - step)):
      if i and self.signals.agreed() is not None:
        break
      t, compiled = time.perf_counter(), engine.compile_seconds
      states, metrics, ok = engine.train_runs(states, step, n)
      if engine.compile_seconds == compiled:
        self.plan.observe(n, time.perf_counter() - t)
      parts.append(metrics)
      finite = ok if finite is None else finite & ok
      step += n
    return states, step, np.concatenate(parts), finite

  def run(self, states: Any, start: int) -> Any:
    profiler = Profiler(self.config, self.runs[0].dir)
    try:
      return self._run(states, start, profiler)
    finally:
      profiler.stop()

  def _run(self, states: Any, start: int, profiler: Profiler) -> Any:
    config, engine = self.config, self.engine
    if start == 0 and config.eval_every > 0:
      for r, run in enumerate(self.runs):
        states, evals = self.evaluate(states, r, 0)
        if evals is not None:
          run.writer.write(0, evals)
          run.last = evals
    step, t_start = start, time.perf_counter()
    while step < config.num_steps and any(run.status == "running" for run in self.runs):
      profiler.update(step)
      stop = next_stop(step, config)
      t, compile_before = time.perf_counter(), engine.compile_seconds
      states, reached, metrics, finite = self.train_chunk(states, step, stop)
      compiled = engine.compile_seconds - compile_before
      self.seconds["train"] += time.perf_counter() - t - compiled
      rate = (reached - step) / max(time.perf_counter() - t - compiled, 1e-9)
      for r, run in enumerate(self.runs):
        bad = first_bad_step(metrics[:, r, 0], bool(finite[r]), config.max_loss)
        if run.status == "running" and bad is not None:
          self.diverge(r, step + bad)
      step = reached
      states = self.after_chunk(states, step, metrics, rate, compiled)
      self.log(step, start, t_start)
      stop_signal = self.signals.agreed()  # read once: every run stops at this step, or none
      t = time.perf_counter()
      self.save_or_stop(states, step, stop_signal)
      self.seconds["checkpoints"] += time.perf_counter() - t
    for run in self.runs:
      if run.status == "running":
        run.set_status("done", step)
    logging.info(
      "time: %s (training compiles %.1f s)",
      ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()),
      engine.compile_seconds,
    )
    return states

  def after_chunk(
    self, states: Any, step: int, metrics: np.ndarray, rate: float, compiled: float
  ) -> Any:
    """Each running run's train scalars and evaluation at `step`, written."""
    config = self.config
    for r, run in enumerate(self.runs):
      if run.status != "running":
        continue
      scalars: dict[str, Any] = {}
      if is_due(step, config.log_every, config.num_steps):
        scalars = {
          "train/loss": float(metrics[:, r, 0].mean()),
          "train/accuracy": float(metrics[:, r, 1].mean()),
          "steps_per_sec": rate,
        }
        if compiled:
          scalars["compile_seconds"] = compiled
      if is_due(step, config.eval_every, config.num_steps):
        states, evals = self.evaluate(states, r, step)
        if evals is None:
          continue
        scalars.update(evals)
        if run.target_open and evals["eval/accuracy"] >= run.config.target_accuracy:
          scalars["target/reached"] = run.config.target_accuracy  # first step at the target
          run.target_open = False
      if scalars:
        run.writer.write(step, scalars)
        run.last = scalars | {"step": step}
    return states

  def save_or_stop(self, states: Any, step: int, stop_signal: int | None) -> None:
    """Checkpoints where due or asked for; after a stop signal, status "stopped" and Stopped."""
    config = self.config
    stopping = stop_signal is not None and step < config.num_steps
    for r, run in enumerate(self.runs):
      if run.status != "running":
        continue
      due = is_due(step, config.checkpoint_every, config.num_steps) or stop_signal
      if due and run.primary:
        run.writer.flush()  # TensorBoard too holds every event up to the checkpoint
        checkpoints.save(run.mgr, self.engine.device_run(states, r), run.config)
      if stopping:
        run.writer.flush()
        run.set_status("stopped", step)
    if stop_signal is not None and stopping:
      raise Stopped(step, stop_signal)

  def log(self, step: int, start: int, t_start: float) -> None:
    num_steps = self.config.num_steps
    if len(self.runs) > 1:
      statuses = [run.status for run in self.runs]
      logging.info(
        "step %d/%d  %d runs training, %d diverged",
        step,
        num_steps,
        statuses.count("running"),
        statuses.count("diverged"),
      )
      return
    last = self.runs[0].last
    if last.get("step") != step:
      return
    scalars = {k: v for k, v in last.items() if k != "step"}
    seconds = time.perf_counter() - t_start - self.engine.compile_seconds
    rate = (step - start) / max(seconds, 1e-9)
    logging.info(
      "step %d/%d  %s  ETA %s",
      step,
      num_steps,
      "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
      format_eta((num_steps - step) / max(rate, 1e-9)),
    )
