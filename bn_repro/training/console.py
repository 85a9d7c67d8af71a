"""What a run prints: the start block before compiling, the summary at the end, and the
progress lines where nothing shows them (a notebook, a script without absl's app.run).

Every line goes through absl logging, as the loop's progress lines do: `bn-repro` shows
them on stderr; `show_progress` sends them to stdout (a notebook's cell) when INFO lines
would otherwise be dropped.
"""

import contextlib
import dataclasses
import logging as pylogging
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from bn_repro import cli
from bn_repro.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What `train_and_evaluate` returns: the run's final status and step, its last metrics
  (the scalars written at the last step: train/*, eval/*, probe/*), where its files are,
  and the wall-clock seconds the call took (compilation included)."""

  workdir: str
  status: str
  step: int
  metrics: Mapping[str, float]
  seconds: float


def start_block(
  config: ml_collections.ConfigDict,
  run: RunDir,
  devices: Sequence[Any],
  num_processes: int,
  sizes: tuple[int, int] | None,
  extra: Sequence[str] = (),
) -> list[str]:
  """The lines a run prints before it compiles anything: what it trains, where, on what.

  `sizes`: the training and evaluation splits' numbers of examples (None: streamed);
  `extra`: more lines (the CPU placement, a launcher's).
  """
  d = config.data
  kinds = sorted({x.platform if x.device_kind == x.platform else x.device_kind for x in devices})
  world = len(devices) * num_processes
  lines = [
    f"run: {run}  " + _resume_text(run, config.num_steps),
    f"devices: {world} ({', '.join(kinds)}) in {num_processes} process"
    + ("es" if num_processes > 1 else "")
    + (f", {len(devices)} in this one" if num_processes > 1 else ""),
  ]
  if sizes is None:
    lines.append(
      f"data: {d.name} streamed from tfds, train {d.train_split!r}, eval {d.eval_split!r}"
    )
  else:
    epochs = config.num_steps * config.batch_size / sizes[0]
    lines.append(
      f"data: {d.name} ({d.source}), train {d.train_split!r} {sizes[0]:,} examples, "
      f"eval {d.eval_split!r} {sizes[1]:,}; {epochs:.3g} epochs"
    )
  lines.append(
    f"steps: {config.num_steps:,} of batch {config.batch_size}; log every {config.log_every}, "
    f"eval every {config.eval_every}, checkpoint every {config.checkpoint_every}"
  )
  bn = "BN" if config.model.use_bn else "no BN"
  lines.append(f"model: {config.model.name}, {bn}, {config.dtype}, seed {config.seed}")
  return lines + list(extra)


def _resume_text(run: RunDir, num_steps: int) -> str:
  step = run.latest_checkpoint()
  if step is None:
    return "(a new run)" if not run.has_metrics() else "(starts over: no checkpoint yet)"
  if step >= num_steps:
    return f"(finished at step {step}: nothing to train)"
  return f"(resumes from the checkpoint at step {step})"


def summary(
  result: RunResult, config: ml_collections.ConfigDict, compile_seconds: float
) -> list[str]:
  """The lines a finished run prints: its final metrics, its files, what to run next."""
  run = RunDir(result.workdir)
  shown = [
    k for k in ("eval/accuracy", "eval/loss", "train/loss", "train/accuracy") if k in result.metrics
  ]
  metrics = "  ".join(f"{k} {result.metrics[k]:.4g}" for k in shown)
  steps = ", ".join(map(str, run.checkpoint_steps())) or "none"
  files = [str(run.metrics_path), f"{run.checkpoint_dir} (steps {steps})"]
  if config.tensorboard:
    files.append(str(run.tensorboard_dir))
  lines = [
    f"{result.status} at step {result.step} in {result.seconds:.1f} s "
    f"({compile_seconds:.1f} s compiling)" + (f": {metrics}" if metrics else ""),
    f"files: {', '.join(files)}; config.json and status.json beside them",
  ]
  if config.model.name == "mlp" and config.data.name == "mnist":
    me, other = ("--bn", "--nobn") if config.model.use_bn else ("--nobn", "--bn")
    lines.append(
      f"next: python scripts/figure1.py {me}={run} {other}=OTHER_RUN --out=DIR "
      "(Figure 1 from this run and one trained the other way)"
    )
  elif config.model.use_bn:
    lines.append(f"next: python scripts/precise_bn.py --workdir={run} (Algorithm 2's statistics)")
  if config.tensorboard:
    lines.append(f"see: tensorboard --logdir={run.tensorboard_dir}")
  return lines


def log_lines(lines: Sequence[str]) -> None:
  for line in lines:
    logging.info("%s", line)


@contextlib.contextmanager
def show_progress() -> Iterator[None]:
  """While it lasts, bn_repro's INFO lines go to stdout if nothing would show them (a
  notebook, a plain script); where absl or the caller already shows INFO, nothing changes."""
  logger = logging.get_absl_logger()
  if logger.isEnabledFor(pylogging.INFO):
    yield
    return
  handler = pylogging.StreamHandler(sys.stdout)
  handler.setFormatter(pylogging.Formatter("%(message)s"))
  handler.addFilter(cli.is_own_line)
  level, propagate = logger.level, logger.propagate
  logger.setLevel(pylogging.INFO)
  logger.propagate = False  # no second copy through the root logger's handlers
  logger.addHandler(handler)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
