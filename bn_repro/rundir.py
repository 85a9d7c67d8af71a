"""The files of a run and of a sweep: the only module that names them.

A run directory (`RunDir`) holds

  config.json      the resolved config (`config.to_dict()`)
  status.json      {"status": pending | running | done | diverged | stopped | failed, "step": N}
  metrics.jsonl    one JSON object per event, always with "step" (bn_repro.metrics)
  tensorboard/     the same scalars as TensorBoard event files
  checkpoints/     Orbax checkpoints, one folder per step (bn_repro.checkpoints)
  profile/         a jax.profiler trace, when config.profile_num_steps > 0
  lock             held (flock) by the process that trains the run, removed when it ends
                   (local disks only)
  sweep.lock       held by a sweep runner while one of its jobs trains the run
  log.txt          the output of a sweep job
  environment.json what the machine had when a sweep job started
  source.json      where re-estimated statistics came from (bn_repro.runs.save_run)

and a sweep directory (`SweepDir`) holds sweep.json, the runner's lines (log.txt: each
point's start and end, the progress and ETA), submitit/ (the SLURM launcher's job files)
and one run directory per point.
Every path is an `etils.epath.Path`, the path type Orbax and tfds use, so that the
same code reads a local folder or a gs:// bucket (through gcsfs: the `gcs` extra).

On object storage (a path with "://") a JSON file is one object upload, which is
atomic: a reader sees the old object or the new one, never a part. Locks do not exist
there, so the rule is one writer a run: one trainer (process 0 of a multi-host run)
and one sweep runner per directory; nothing enforces it. Before the first read or
write of a run on object storage, its bucket is probed once (bn_repro.storage), so an
unreachable bucket is one line and nothing is written anywhere.
"""

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etils import epath

from bn_repro import fields
from bn_repro.errors import UserError
from bn_repro.storage import check_storage, is_local, write_text_atomic

FINISHED = ("done", "diverged")
PENDING = {"status": "pending"}


def write_json(path: epath.PathLike, obj: Any) -> None:
  """Writes `obj` as JSON atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=list) + "\n")


def read_json(path: epath.PathLike) -> Any:
  """The JSON value in `path`; UserError naming the file when it is unreadable."""
  path = epath.Path(path)
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); delete or repair it") from None


def _same_file(fd: int, path: epath.Path) -> bool:
  """Whether the open descriptor `fd` is the file at `path` now."""
  try:
    return os.fstat(fd).st_ino == os.stat(path).st_ino
  except OSError:
    return False


class RunDir:
  """One run's directory; `RunDir(workdir)` writes nothing until a write method is called."""

  CONFIG = "config.json"
  STATUS = "status.json"
  METRICS = "metrics.jsonl"
  TENSORBOARD = "tensorboard"
  CHECKPOINTS = "checkpoints"
  PROFILE = "profile"
  LOCK = "lock"
  SWEEP_LOCK = "sweep.lock"
  LOG = "log.txt"
  ENVIRONMENT = "environment.json"
  SOURCE = "source.json"

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)

  def __repr__(self) -> str:
    return f"RunDir({os.fspath(self.path)!r})"

  def __str__(self) -> str:
    return os.fspath(self.path)

  @property
  def config_path(self) -> epath.Path:
    return self.path / self.CONFIG

  @property
  def status_path(self) -> epath.Path:
    return self.path / self.STATUS

  @property
  def metrics_path(self) -> epath.Path:
    return self.path / self.METRICS

  @property
  def tensorboard_dir(self) -> epath.Path:
    return self.path / self.TENSORBOARD

  @property
  def checkpoint_dir(self) -> epath.Path:
    return self.path / self.CHECKPOINTS

  @property
  def profile_dir(self) -> epath.Path:
    return self.path / self.PROFILE

  @property
  def log_path(self) -> epath.Path:
    return self.path / self.LOG

  @property
  def environment_path(self) -> epath.Path:
    return self.path / self.ENVIRONMENT

  @property
  def source_path(self) -> epath.Path:
    return self.path / self.SOURCE

  # Reading.

  def exists(self) -> bool:
    return self.path.is_dir()

  def has_config(self) -> bool:
    return self.config_path.is_file()

  def config(self) -> dict[str, Any]:
    """config.json as a dict; UserError when the directory is not a run's."""
    if not self.exists():
      raise UserError(
        f"run directory {self} does not exist; pass the --workdir of a bn-repro run",
        field="--workdir",
      )
    if not self.has_config():
      raise UserError(
        f"{self} has no {self.CONFIG}, so bn-repro did not write it; "
        "pass the --workdir of a bn-repro run",
        field="--workdir",
      )
    return read_json(self.config_path)

  def status(self) -> dict[str, Any]:
    """status.json, or {"status": "pending"} when absent or unreadable."""
    try:
      status = json.loads(self.status_path.read_text())
    except (OSError, ValueError):
      return dict(PENDING)
    return status if isinstance(status, dict) and "status" in status else dict(PENDING)

  def has_metrics(self) -> bool:
    return self.metrics_path.is_file()

  def metrics(self) -> list[dict[str, Any]]:
    """Every event of metrics.jsonl in file order ("nan"/"inf" strings back to floats)."""
    from bn_repro.metrics import parse_events

    return parse_events(self.metrics_path.read_text())

  def environment(self) -> dict[str, Any] | None:
    return read_json(self.environment_path) if self.environment_path.is_file() else None

  def source(self) -> dict[str, Any] | None:
    return read_json(self.source_path) if self.source_path.is_file() else None

  def checkpoint_steps(self) -> list[int]:
    """Steps of the checkpoint folders, ascending (what a resume would choose from)."""
    try:
      names = [p.name for p in self.checkpoint_dir.iterdir()]
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit())

  def latest_checkpoint(self) -> int | None:
    """The step a run resumes from, or None when it has no checkpoint."""
    steps = self.checkpoint_steps()
    return steps[-1] if steps else None

  def busy(self) -> bool:
    """Whether a trainer process holds this run's lock right now."""
    if not is_local(self.path):
      return False
    try:
      fd = os.open(self.path / self.LOCK, os.O_RDONLY)
    except OSError:
      return False
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return False
    except BlockingIOError:
      return True
    finally:
      os.close(fd)

  def check_config(self, config: Mapping[str, Any], may_change: Sequence[str] = ()) -> None:
    """Refuses to resume a run whose saved config differs from `config` in a field
    outside `may_change` (fields only one side has come from another version of the
    code, not from the user, and are let through)."""
    check_storage(self.path)
    if not self.has_config():
      return
    saved = fields.flatten(read_json(self.config_path))
    new = fields.flatten(config)
    differ = fields.differ(saved, new, ignore=may_change)
    if differ:
      detail = ", ".join(f"{k} ({saved.get(k)!r} -> {new.get(k)!r})" for k in differ)
      raise UserError(
        f"workdir {self} holds a run with a different config: {detail}; "
        "use a new --workdir, rerun with the saved config, or pass --allow_config_change",
        field="--workdir",
      )

  # Writing.

  def write_config(self, config: Mapping[str, Any]) -> None:
    write_json(self.config_path, dict(config))

  def write_status(self, status: str, **fields: Any) -> None:
    write_json(self.status_path, {"status": status, **fields})

  def write_environment(self, environment: Mapping[str, Any]) -> None:
    write_json(self.environment_path, dict(environment))

  def write_source(self, source: Mapping[str, Any]) -> None:
    write_json(self.source_path, dict(source))

  def metric_writer(self, tensorboard: bool = True):
    """A bn_repro.metrics.MetricWriter appending to this run's metrics (and TensorBoard)."""
    from bn_repro.metrics import MetricWriter

    return MetricWriter(self.metrics_path, self.tensorboard_dir if tensorboard else None)

  def clear_metrics(self) -> None:
    """Drops metrics.jsonl and tensorboard/ (a run that starts over from step 0)."""
    for path in (self.metrics_path, self.tensorboard_dir):
      if path.is_dir():
        path.rmtree()
      elif path.exists():
        path.unlink()

  def check_not_a_file(self) -> None:
    """UserError when the path is a file (a run directory is new or a directory)."""
    if self.path.exists() and not self.path.is_dir():
      raise UserError(
        f"{self} is a file, not a directory; choose a new or existing run directory for --workdir",
        field="--workdir",
      )

  def create(self) -> None:
    """Makes the directory; UserError naming it when that is not possible."""
    check_storage(self.path)
    self.check_not_a_file()
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise UserError(
        f"cannot write to {self} ({e.strerror or e}); choose a writable --workdir",
        field="--workdir",
      ) from None

  @contextlib.contextmanager
  def exclusive(self) -> Iterator[None]:
    """Creates the directory and holds its lock (released when the process dies).

    On object storage the lock is skipped: one process writes a run (module docstring).
    """
    self.create()
    if not is_local(self.path):
      yield
      return
    try:
      fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(
        f"cannot write to {self} ({e.strerror}); choose a writable --workdir", field="--workdir"
      ) from None
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise UserError(
          f"{self} is in use by another run (pid {owner}); wait for it to "
          "finish or use another --workdir",
          field="--workdir",
        ) from None
      if not _same_file(fd, self.path / self.LOCK):  # removed by a run that just ended
        raise UserError(
          f"{self} was in use by another run a moment ago; rerun the command",
          field="--workdir",
        )
      os.ftruncate(fd, 0)
      os.pwrite(fd, str(os.getpid()).encode(), 0)
      try:
        yield
      finally:
        with contextlib.suppress(FileNotFoundError):  # removed while held: none left behind
          os.unlink(self.path / self.LOCK)
    finally:
      os.close(fd)

  def claim(self) -> int | None:
    """Takes the sweep runner's lock on this point: the open descriptor (for the job to
    inherit; the caller closes it), or None when another runner or a trainer holds it.
    On object storage a descriptor that holds nothing: one runner a sweep there."""
    self.create()
    if not is_local(self.path):
      return os.open(os.devnull, os.O_RDONLY)
    fd = os.open(self.path / self.SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    if self.busy():  # a trainer started by hand
      os.close(fd)
      return None
    return fd

  def check_disk(self, nbytes: int) -> None:
    """Refuses to start when the directory cannot hold a few checkpoints of `nbytes`."""
    if not is_local(self.path):
      return
    need = 4 * nbytes + (16 << 20)
    free = shutil.disk_usage(self.path).free
    if free < need:
      raise UserError(
        f"{self} has {free >> 20} MiB free but checkpoints need about "
        f"{need >> 20} MiB; free space or choose another --workdir",
        field="--workdir",
      )


class SweepDir:
  """A sweep's directory: sweep.json and one RunDir per point (named by the point)."""

  RECORD = "sweep.json"
  LOG = "log.txt"
  SUBMITIT = "submitit"

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)

  def __str__(self) -> str:
    return os.fspath(self.path)

  @property
  def record_path(self) -> epath.Path:
    return self.path / self.RECORD

  @property
  def log_path(self) -> epath.Path:
    return self.path / self.LOG

  @property
  def submitit_dir(self) -> epath.Path:
    return self.path / self.SUBMITIT

  def log(self, line: str) -> None:
    """Appends one of the runner's lines to the sweep's log."""
    self.path.mkdir(parents=True, exist_ok=True)
    with self.log_path.open("a") as f:
      f.write(line + "\n")

  def has_record(self) -> bool:
    return self.record_path.is_file()

  def record(self) -> dict[str, Any]:
    """sweep.json; UserError when the directory is not a sweep's."""
    if not self.has_record():
      raise UserError(
        f"{self.record_path} does not exist; pass the --workdir of a bn-repro-sweep run",
        field="--sweep_dir",
      )
    record = read_json(self.record_path)
    if not isinstance(record, dict) or not isinstance(record.get("points"), list):
      raise UserError(f"{self.record_path} has no list of points; rerun the sweep to rewrite it")
    return record

  def write_record(self, record: Mapping[str, Any]) -> None:
    check_storage(self.path)
    self.path.mkdir(parents=True, exist_ok=True)
    write_json(self.record_path, dict(record))

  def point(self, name: str) -> RunDir:
    return RunDir(self.path / name)
