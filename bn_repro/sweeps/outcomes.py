"""A sweep point's files before and after its job: finished or not, a fresh start, and
the outcome of a job from its exit code and status (the sweep runner's and the
SLURM launcher's common ground)."""

import os
from collections.abc import Mapping
from typing import Any

from bn_repro.errors import EXIT_DIVERGED, EXIT_STOPPED
from bn_repro.rundir import RunDir
from bn_repro.sweeps.resolve import ResolvedPoint


def is_finished(point: ResolvedPoint, status: Mapping[str, Any]) -> bool:
  """Done or diverged; a done run whose num_steps was raised since is not (it extends)."""
  if status["status"] == "diverged":
    return True
  return status["status"] == "done" and status.get("step", 0) >= point.resolved.get("num_steps", 0)


def prepare_fresh(point: ResolvedPoint) -> None:
  """A point with no checkpoint starts over: drop a previous attempt's partial files."""
  run = point.run_dir
  if run.latest_checkpoint() is not None:
    return
  run.clear_metrics()
  run.write_config(point.resolved)


def last_line(path: os.PathLike, offset: int) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      lines = f.read().decode(errors="replace").strip().splitlines()
  except OSError:
    return ""
  return lines[-1].strip() if lines else ""


def outcome(status: Mapping[str, Any], rc: int, signalled: bool, took: str) -> tuple[str, str]:
  """A finished job's point: (outcome, what to say) from its exit code and status; for
  "failed", what to say comes from `error`."""
  if rc == 0 and status["status"] == "done":
    return "done", f"done at step {status.get('step')} ({took})"
  if status["status"] == "diverged" and rc in (0, EXIT_DIVERGED, EXIT_STOPPED):
    return "diverged", f"diverged at step {status.get('step')} ({took})"
  if rc == EXIT_STOPPED or (signalled and rc != 0):
    return "stopped", f"stopped at step {status.get('step')}; rerun to resume"
  return "failed", ""


def error(status: Mapping[str, Any], rc: int, line: str) -> str:
  """Why a job failed, in one line: its exit and its output's last line."""
  if rc == 0:
    return f"exited 0 but {RunDir.STATUS} says {status['status']!r}"
  if rc < 0:
    return f"killed by signal {-rc}" + (f"; last output: {line}" if line else "")
  return line or f"exit code {rc} without output"
