"""The process supervisor: runs resolved points as jobs, at most `parallel` at once.

A job is one process: a point's trainer (`python -m bn_repro.main ...`), or with
--batched a group of points (`batch_groups`) trained as one program by the runner's
`--in_process` child. The runner claims each point (RunDir.claim: no two runners, nor a
trainer started by hand, run it at once), skips finished ones, records each outcome in
the point's status and its output in the first point's log, and on SIGINT/SIGTERM lets
its jobs save a checkpoint before it exits. `launch_local` starts a job's process on this
machine; `Runner(launch=...)` takes another launcher of the same signature (a cluster's).
"""

import collections
import ctypes
import dataclasses
import datetime
import json
import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, Protocol

import ml_collections

from bn_repro import fields, training
from bn_repro.errors import UserError
from bn_repro.parallel import usable_cpus
from bn_repro.sweeps import devices, outcomes
from bn_repro.sweeps.environment import probe_environment
from bn_repro.sweeps.progress import Progress
from bn_repro.sweeps.resolve import ResolvedPoint

# With several trainers on one machine, each one's XLA CPU thread pool would span all
# cores. This flag (accepted by jax 0.10.2; unknown XLA flags abort) keeps each to one
# thread. Preallocation off lets several processes share one GPU.
PARALLEL_ENV = {
  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
  "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


def child_env(parallel: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
  """The trainers' environment: one XLA CPU thread each when several run at once."""
  env = dict(os.environ if base is None else base)
  if parallel > 1:
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
      env["XLA_FLAGS"] = f"{flags} {PARALLEL_ENV['XLA_FLAGS']}".strip()
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", PARALLEL_ENV["XLA_PYTHON_CLIENT_PREALLOCATE"])
  return env


# ---------------------------------------------------------------------------
# Groups.


def batch_groups(
  points: Sequence[ResolvedPoint], indices: Sequence[int], max_runs: int = 0, parallel: int = 1
) -> list[list[int]]:
  """`indices` in --batched groups: points whose configs differ only in training.VARYING
  and whose latest checkpoints are at one step, at most `max_runs` a group (0: no limit;
  a larger group is split evenly); a point training.check_batchable refuses stays alone.
  With fewer groups than `parallel` processes, the largest groups are split further
  (evenly, into parts of 2 runs or more) until every process has one. Groups come in
  the order of their first points."""
  groups: dict[Any, list[int]] = {}
  for i in indices:
    point = points[i]
    try:
      training.check_batchable(ml_collections.ConfigDict(point.resolved))
      shared = {
        k: v for k, v in fields.flatten(point.resolved).items() if k not in training.VARYING
      }
      key: Any = (json.dumps(shared, sort_keys=True), point.run_dir.latest_checkpoint())
    except UserError:
      key = i  # an int never equals the tuples above
    groups.setdefault(key, []).append(i)
  members = list(groups.values())
  parts = [math.ceil(len(m) / max_runs) if max_runs else 1 for m in members]
  while sum(parts) < parallel:
    # of the groups one more part leaves 2 runs a part, the one whose parts are largest
    splittable = [j for j, m in enumerate(members) if len(m) >= 2 * (parts[j] + 1)]
    if not splittable:
      break
    parts[max(splittable, key=lambda j: len(members[j]) / parts[j])] += 1
  out = []
  for m, n in zip(members, parts):
    bounds = [len(m) * k // n for k in range(n + 1)]
    out += [m[a:b] for a, b in zip(bounds, bounds[1:])]
  return out


# ---------------------------------------------------------------------------
# Launching a job's process.


class Process(Protocol):
  """What the runner needs of a job's process; subprocess.Popen has it."""

  def poll(self) -> int | None: ...

  def send_signal(self, signum: int) -> None: ...

  def kill(self) -> None: ...


# (argv, cwd, env, log file for its output, lock descriptors it inherits, CPU cores it may
# use (empty: all)) -> its process.
Launcher = Callable[
  [Sequence[str], str, Mapping[str, str], BinaryIO, Sequence[int], Sequence[int]], Process
]


def _preexec(cpus: Sequence[int]) -> Callable[[], None] | None:
  """A preexec_fn that confines the child to `cpus` and asks Linux to SIGTERM it when
  the runner dies (even by SIGKILL), so no orphan trains on; the trainer then saves a
  checkpoint and exits."""
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return (lambda: devices.confine(cpus)) if cpus else None
  parent = os.getpid()

  def preexec():
    devices.confine(cpus)
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
      os._exit(1)

  return preexec


def launch_local(
  argv: Sequence[str],
  cwd: str,
  env: Mapping[str, str],
  log: BinaryIO,
  lock_fds: Sequence[int],
  cpus: Sequence[int] = (),
) -> subprocess.Popen:
  """A child process on this machine, in its own session, on `cpus` (empty: the runner's),
  that dies with the runner."""
  return subprocess.Popen(
    argv,
    cwd=cwd,
    env=env,
    stdin=subprocess.DEVNULL,
    stdout=log,
    stderr=subprocess.STDOUT,
    start_new_session=True,
    pass_fds=lock_fds,
    preexec_fn=_preexec(cpus),
  )


@dataclasses.dataclass
class _Job:
  indices: list[int]  # its points; the first one's log holds the process's output
  proc: Process
  lock_fds: list[int]
  log: BinaryIO
  log_offset: int
  started: float
  slot: devices.Slot


# ---------------------------------------------------------------------------
# The runner.


class Runner:
  """Runs points in at most `parallel` child processes; SIGINT/SIGTERM stop it cleanly.

  With `batch_command` (--batched: this runner's command, whose `--in_process` trains a
  group), the points of each of `batch_groups` share one process. `launch` starts a
  job's process (default: `launch_local`).
  """

  def __init__(
    self,
    points: Sequence[ResolvedPoint],
    parallel: int,
    cwd: str,
    out: Callable[[str], None],
    batch_command: Sequence[str] | None = None,
    max_batched_runs: int = 0,
    cpu_devices: int = 0,
    launch: Launcher = launch_local,
  ):
    self.points = points
    self.parallel = parallel
    self.cwd = cwd
    self.out = out
    self.batch_command = batch_command
    self.max_batched_runs = max_batched_runs
    self.cpu_devices = cpu_devices
    self.launch = launch
    self.env = child_env(parallel)
    self.environment: dict[str, Any] | None = None
    self.pool: devices.DevicePool | None = None
    self.progress = Progress(0)
    self.outcomes: collections.Counter = collections.Counter()
    self.signal: int | None = None
    self.signals_seen = 0
    self._terminated_at = 0

  def _cpu_devices_flag(self) -> list[str]:
    """A batched child's CPU devices: --cpu_devices, or its share of the usable CPUs."""
    if self.cpu_devices:
      return [f"--cpu_devices={self.cpu_devices}"]
    if self.parallel == 1:
      return []  # the child takes one CPU device per usable CPU
    return [f"--cpu_devices={max(1, usable_cpus() // self.parallel)}"]

  def _on_signal(self, signum, frame):
    del frame
    self.signal = signum
    self.signals_seen += 1

  def _say(self, index: int, point: ResolvedPoint, what: str) -> None:
    self.out(f"[{index + 1}/{len(self.points)}] {point.name}: {what}")

  def run(self, selected: Sequence[int]) -> int:
    """Runs the points at `selected` indices; returns the exit code."""
    previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      return self._run(selected)
    finally:
      for s, h in previous.items():
        signal.signal(s, h)

  def _run(self, selected: Sequence[int]) -> int:
    self.progress = Progress(len(selected))
    todo = self._unfinished(selected)
    self._loop(
      collections.deque(
        [[i] for i in todo]
        if self.batch_command is None
        else batch_groups(self.points, todo, self.max_batched_runs, self.parallel)
      )
    )
    if self.signal is not None:
      self.out(f"sweep: stopped by signal {self.signal}; rerun the same command to finish")
      return 128 + self.signal
    c = self.outcomes
    self.out(
      f"sweep: {c['done']} done, {c['diverged']} diverged, {c['failed']} failed, "
      f"{c['stopped']} stopped ({c['skipped']} skipped as finished before)"
    )
    return 0 if c["done"] + c["diverged"] == len(selected) else 1

  def _unfinished(self, selected: Sequence[int]) -> list[int]:
    """The selected points left to run; the finished ones are counted as skipped."""
    todo = []
    for i in selected:
      point = self.points[i]
      status = point.run_dir.status()
      if outcomes.is_finished(point, status):
        self.outcomes["skipped"] += 1
        self.outcomes[status["status"]] += 1
        self.progress.skipped()
        self._say(i, point, f"skipped ({status['status']} at step {status.get('step')})")
      else:
        todo.append(i)
    return todo

  def _loop(self, queue: collections.deque) -> None:
    """Runs the queued groups until none is left or running, or a signal stops them."""
    running: list[_Job] = []
    busy_said: set[int] = set()
    while queue or running:
      if self.signal is not None:
        self._stop(running, queue)
      while queue and len(running) < self.parallel and self.signal is None:
        slot = self._acquire(queue[0])
        if slot is None:  # the devices it needs are in use: wait for a job to end
          break
        job, busy = self._start(queue.popleft(), slot)
        if job is not None:
          running.append(job)
        else:
          self._release(slot)
        if busy:  # locked by another runner: retry later
          for i in sorted(set(busy) - busy_said):
            self._say(i, self.points[i], "busy (another process is running it); waiting")
          busy_said.update(busy)
          queue.append(busy)
          break
      for job in list(running):
        rc = job.proc.poll()
        if rc is not None:
          running.remove(job)
          self._finish(job, rc)
          self.out(self.progress.line(running=len(running)))
      time.sleep(0.1)

  def _stop(self, running: list[_Job], queue: collections.deque) -> None:
    """First signal: SIGTERM the children (they checkpoint and exit); another: SIGKILL."""
    if self._terminated_at == 0:
      queue.clear()
      self._terminated_at = self.signals_seen
      self.out(
        f"sweep: signal {self.signal}: stopping {len(running)} running point(s); "
        "they save a checkpoint (signal again to kill them)"
      )
      for job in running:
        job.proc.send_signal(signal.SIGTERM)
    elif self.signals_seen > self._terminated_at:
      self._terminated_at = self.signals_seen
      for job in running:
        job.proc.kill()

  def _claim(self, group: Sequence[int]) -> tuple[list[tuple[int, int, dict]], list[int]]:
    """The points of `group` this runner may start, as (index, lock fd, status), and the
    points another process holds; a point finished meanwhile is counted and left out."""
    claimed, busy = [], []
    for i in group:
      point = self.points[i]
      fd = point.run_dir.claim()
      if fd is None:  # another runner, or a trainer started by hand
        busy.append(i)
        continue
      status = point.run_dir.status()
      if outcomes.is_finished(point, status):  # another runner finished it while we waited
        os.close(fd)
        self.outcomes[status["status"]] += 1
        self.progress.skipped()
        self._say(i, point, f"{status['status']} (by another runner)")
      else:
        claimed.append((i, fd, status))
    return claimed, busy

  def _argv(self, points: Sequence[ResolvedPoint]) -> list[str]:
    """A job's command: the trainer's for one point, the batched child's for several."""
    if len(points) == 1:
      return points[0].argv()
    assert self.batch_command is not None  # groups of several points exist with --batched only
    return [
      *self.batch_command,
      "--in_process",
      *self._cpu_devices_flag(),
      *(f"--point={p.name}" for p in points),
    ]

  def _open_log(self, points: Sequence[ResolvedPoint], argv: Sequence[str]) -> tuple[BinaryIO, int]:
    """The first point's log, opened for the job's output after a header line, and where
    that output starts; the others' logs say where their output is."""
    header = f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(argv)}\n"
    leader = points[0].run_dir.log_path
    for point in points[1:]:
      with open(point.run_dir.log_path, "a") as f:
        f.write(f"{header}(output in {os.path.relpath(leader, point.workdir)})\n")
    log = open(leader, "ab")  # noqa: SIM115  # the job closes it
    log.write(header.encode())
    log.flush()
    return log, log.tell()

  def _acquire(self, group: Sequence[int]) -> devices.Slot | None:
    """The devices and cores for the job of `group` (the first time, after probing what
    the machine has), or None while they are in use."""
    if self.pool is None:
      self.environment = probe_environment(self.env)
      self.pool = devices.pool_from_probe(self.environment, self.parallel, self.env)
    return self.pool.acquire(devices.wanted(self.points[group[0]].resolved, self.pool.share))

  def _release(self, slot: devices.Slot) -> None:
    if self.pool is not None:
      self.pool.release(slot)

  def _start(self, group: Sequence[int], slot: devices.Slot) -> tuple[_Job | None, list[int]]:
    """Starts the points of `group` in one process on `slot`: the job (None if none was
    left to run: finished meanwhile, or busy) and the points another process holds."""
    claimed, busy = self._claim(group)
    if not claimed:
      return None, busy
    points = [self.points[i] for i, _, _ in claimed]
    placed = {"slot": slot.describe(), "slot_env": slot.env(), "slot_cpus": list(slot.cpus)}
    for point in points:
      outcomes.prepare_fresh(point)
      point.run_dir.write_environment({**(self.environment or {}), **placed})
    argv = self._argv(points)
    log, offset = self._open_log(points, argv)
    fds = [fd for _, fd, _ in claimed]
    proc = self.launch(argv, self.cwd, {**self.env, **slot.env()}, log, fds, slot.cpus)
    together = f" (batched, {len(points)} points)" if len(points) > 1 else ""
    together += f" on {slot.describe()}" if slot.devices else ""  # cores: environment.json
    for (i, _, status), point in zip(claimed, points):
      extra = f" from step {status['step']}" if status.get("step") else ""
      self._say(i, point, f"started{extra}{together}")
    indices = [i for i, _, _ in claimed]
    return _Job(indices, proc, fds, log, offset, time.monotonic(), slot), busy

  def _finish(self, job: _Job, rc: int) -> None:
    """Each point's outcome from the exit code and its status (a batched group exits 0
    when each of its points is done or diverged, 4 when stopped)."""
    job.log.close()
    self._release(job.slot)
    took = f"{time.monotonic() - job.started:.1f} s"
    log_path = self.points[job.indices[0]].run_dir.log_path
    for i, fd in zip(job.indices, job.lock_fds):
      point = self.points[i]
      status = point.run_dir.status()
      outcome, what = outcomes.outcome(status, rc, self.signal is not None, took)
      if outcome == "failed":
        error = outcomes.error(status, rc, outcomes.last_line(log_path, job.log_offset))
        point.run_dir.write_status("failed", error=error, exit_code=rc)
        what = f"failed (exit {rc}): {error}"
      os.close(fd)
      self.outcomes[outcome] += 1
      self.progress.finished(outcome)
      self._say(i, point, what)
