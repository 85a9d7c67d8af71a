"""A sweep on a SLURM cluster: one job array through submitit, one array task a point.

Each task runs this sweep's own runner for its one point (`bn-repro-sweep ... --point=NAME`,
the command --print_commands prints), so a point's status, its log, skipping and resuming
are exactly those of a local sweep: a rerun submits only the points not done or diverged,
and a stopped, failed or killed point resumes from its latest checkpoint. The task asks
SLURM for `gpus_per_point` GPUs on one node; SLURM sets CUDA_VISIBLE_DEVICES, and the
point's trainer uses every GPU it sees. The submitting process waits (--slurm_wait),
printing each point's outcome and the sweep's progress; the jobs run on if it is stopped.
Job files (scripts, pickles, each task's output) go to <sweep dir>/submitit/.
"""

import dataclasses
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from bn_repro.errors import UserError
from bn_repro.rundir import SweepDir
from bn_repro.sweeps import outcomes
from bn_repro.sweeps.progress import Progress
from bn_repro.sweeps.resolve import ResolvedPoint

POLL_S = 2.0  # how often the waiting runner looks at its jobs


@dataclasses.dataclass(frozen=True)
class Options:
  """The job array's resources; `cluster` "local" is submitit's local executor (tests)."""

  partition: str = ""
  time_min: int = 60
  gpus_per_point: int = 0
  cpus_per_point: int = 1
  array_parallelism: int = 0  # at most this many tasks at once (0: no limit)
  cluster: str = "slurm"


def run_point(argv: Sequence[str], cwd: str) -> int:
  """An array task: the sweep's runner for one point; its exit code."""
  return subprocess.run(list(argv), cwd=cwd, check=False).returncode


def executor(folder: str, options: Options, name: str) -> Any:
  """A submitit executor for `options`; UserError when submitit is missing."""
  try:
    import submitit
  except ImportError:
    raise UserError(
      "needs submitit: pip install 'bn_repro[slurm]'", field="--launcher=slurm"
    ) from None
  ex = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
  params: dict[str, Any] = {
    "name": name,
    "timeout_min": options.time_min,
    "gpus_per_node": options.gpus_per_point,
    "cpus_per_task": options.cpus_per_point,
    "tasks_per_node": 1,
    "nodes": 1,
  }
  if options.partition:
    params["slurm_partition"] = options.partition
  if options.array_parallelism:
    params["slurm_array_parallelism"] = options.array_parallelism
  ex.update_parameters(**params)
  return ex


def _ended(point: ResolvedPoint, job: Any) -> tuple[str, str]:
  """A point's outcome once its task ended, from its status as the task's runner left it;
  a status the task never finished (killed, out of time) is recorded as failed."""
  status = point.run_dir.status()
  s, step = status["status"], status.get("step")
  if s in ("done", "diverged") and outcomes.is_finished(point, status):
    return s, f"{s} at step {step}"
  if s == "stopped":
    return "stopped", f"stopped at step {step}; rerun to resume"
  if s != "failed":
    error = f"job {job.job_id} ended ({job.state}) while the point was {s}"
    point.run_dir.write_status("failed", error=error, **({"step": step} if step else {}))
    status = point.run_dir.status()
  return "failed", f"failed: {status.get('error', '')}; rerun to resume"


def submit(
  points: Sequence[ResolvedPoint],
  selected: Sequence[int],
  command: Sequence[str],
  cwd: str,
  sweep_dir: SweepDir,
  options: Options,
  out: Callable[[str], None],
  wait: bool = True,
) -> int:
  """Submits the unfinished `selected` points as one array; with `wait`, follows them to
  the end. Returns the exit code a local sweep would (0: every point done or diverged)."""
  progress = Progress(len(selected))
  todo = []
  for i in selected:
    status = points[i].run_dir.status()
    if outcomes.is_finished(points[i], status):
      progress.skipped()
      out(f"[{i + 1}/{len(points)}] {points[i].name}: skipped ({status['status']})")
    else:
      todo.append(i)
  if not todo:
    out(progress.line())
    return 0
  ex = executor(str(sweep_dir.submitit_dir), options, name=f"bn-repro:{sweep_dir.path.name}")
  argvs = [[*command, f"--point={points[i].name}"] for i in todo]
  jobs = ex.map_array(run_point, argvs, [cwd] * len(todo))
  for i, job in zip(todo, jobs):
    out(f"[{i + 1}/{len(points)}] {points[i].name}: submitted as job {job.job_id}")
  if not wait:
    out(f"sweep: {len(jobs)} point(s) submitted; rerun the same command to follow or resume")
    return 0
  return _follow(points, dict(zip(todo, jobs)), progress, out)


def _follow(
  points: Sequence[ResolvedPoint], jobs: dict[int, Any], progress: Progress, out: Callable
) -> int:
  """Waits for the jobs; each point's outcome and the progress line as each one ends."""
  unfinished = 0
  try:
    while jobs:
      for i, job in list(jobs.items()):
        if job.done():
          del jobs[i]
          outcome, what = _ended(points[i], job)
          unfinished += outcome not in ("done", "diverged")
          progress.finished(outcome)
          out(f"[{i + 1}/{len(points)}] {points[i].name}: {what} (job {job.job_id})")
          out(progress.line(running=len(jobs)))
      time.sleep(POLL_S if jobs else 0)
  except KeyboardInterrupt:
    out("sweep: stopped waiting; the jobs run on (rerun the same command to follow them)")
    return 130
  return 0 if unfinished == 0 else 1
