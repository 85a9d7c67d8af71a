"""Sweeps: a grid of config fields over a base config, one trainer process per point.

A sweep file (e.g. configs/mnist_sweeps.py) declares its grids next to its base config
and exposes `get_sweep(name) -> Sweep`:

  from bn_repro import sweep as sw
  sw.Sweep(base="mnist_mlp.py:bn_sigmoid",  # relative to the sweep file
           grid=sw.product(sw.axis("model.use_bn", (True, False)),
                           sw.axis("optimizer.learning_rate", (0.1, 1.0))),
           fixed={"max_loss": 1e3},
           aliases={"model.use_bn": "bn", "optimizer.learning_rate": "lr"})

A point is a dict of dotted config fields -> values; its key "config" picks another
variant of the base file ("bn_x5") or another file ("inception.py:bn_x5"). A point's
name lists its values sorted by alias ("bn=on,lr=0.1"): it depends on the point alone,
not on dict or grid order.

Runner:
  python -m bn_repro.sweep --sweep=configs/mnist_sweeps.py:lr_grid --workdir=runs/lr \
      [--parallel=N] [--override=FIELD=VALUE ...] [--point=NAME ...] [--print_commands] \
      [--batched [--max_batched_runs=N]]

Each point runs as `python -m bn_repro.main --config=... --workdir=<workdir>/<name>
--config.<field>=<value> ...` in its own process, so a crash or divergence in one never
touches another. `--print_commands` prints instead one command per point (for a job
array: `sed -n "${SLURM_ARRAY_TASK_ID}p" commands.txt | bash`); each runs that point
through this runner, so statuses and skipping work the same way.

`--batched`: points whose configs differ only in bn_repro.batched.VARYING (seed,
learning rate) and that resume from the same checkpoint step train together, one
process and one compiled program per group (`batch_groups`; the child is this runner
with `--in_process --point=A --point=B ...`, its output in the first point's log.txt);
a diverging point is recorded and its partners go on. Points batched.py refuses, and
groups of one, run as above. On a CPU host the child makes `--cpu_devices` JAX devices
(default: the usable CPUs / --parallel) and spreads the group's runs over them
(bn_repro.parallel.run_shards). Each point's files are those of a single run (on this
project's CPU, bit for bit in the layouts measured: README, Batched runs).
`--print_commands` then prints one command per group.
Batching is a flag, not a field of the Sweep, because it changes how the points run,
not what they are: the same sweep runs either way, and which is faster depends on the
machine.

Layout: <workdir>/sweep.json (the sweep, its points and their commands), and per point
<workdir>/<name>/: the trainer's files (config.json, status.json, metrics.jsonl,
checkpoints/) plus the runner's log.txt, environment.json and sweep.lock.
Status: pending, running, done, diverged (step), stopped (step: SIGTERM, checkpoint
saved), failed (error). Done and diverged points are skipped (a done one whose num_steps
was raised since runs on); the others run again and the trainer resumes from its checkpoint.

Exit codes: 0 every selected point done or diverged; 1 some point failed or did not
finish; 2 bad input (one line on stderr, nothing written); 128+N after signal N.
"""

import collections
import ctypes
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.util
import itertools
import json
import logging as pylogging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bn_repro import cli, configs
from bn_repro.errors import EXIT_DIVERGED, EXIT_STOPPED, UserError
from bn_repro.metrics import write_json

Point = dict[str, Any]
CONFIG_KEY = "config"  # a point's base config variant ("bn_x5") or file ("file.py:variant")

SWEEP_FILE = "sweep.json"
STATUS_FILE = "status.json"  # written by the trainer (bn_repro/train.py), and "failed" by us
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
ENVIRONMENT_FILE = "environment.json"
LOCK_FILE = "sweep.lock"  # the runner's lock on a point (inherited by its trainer)
TRAINER_LOCK_FILE = "lock"  # bn_repro/train.py's own lock on a workdir
CHECKPOINT_DIR = "checkpoints"
FINISHED = ("done", "diverged")


# With several trainers on one machine, each one's XLA CPU thread pool would span all
# cores. This flag (accepted by jax 0.10.2; unknown XLA flags abort) keeps each to one
# thread. Preallocation off lets several processes share one GPU.
PARALLEL_ENV = {
  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
  "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


# ---------------------------------------------------------------------------
# Grid definitions.


def axis(field: str, values: Iterable[Any]) -> list[Point]:
  """One point per value of `field`."""
  return [{field: v} for v in values]


def _merge(parts: Sequence[Point]) -> Point:
  out: Point = {}
  for part in parts:
    for k, v in part.items():
      if k in out:
        raise ValueError(f"field {k!r} is set by two grids that are combined")
      out[k] = v
  return out


def product(*grids: Sequence[Point]) -> list[Point]:
  """Every combination of one point from each grid (the last grid varies fastest)."""
  return [_merge(parts) for parts in itertools.product(*grids)]


def zip_(*grids: Sequence[Point]) -> list[Point]:
  """The i-th points of all grids merged; the grids must have equal lengths."""
  lengths = {len(g) for g in grids}
  if len(lengths) > 1:
    raise ValueError(f"zip_ needs grids of equal length, got {sorted(lengths)}")
  return [_merge(parts) for parts in zip(*grids)]


def concat(*grids: Sequence[Point]) -> list[Point]:
  """The points of all grids, one after another."""
  return [dict(p) for g in grids for p in g]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A grid of config fields over a base config.

  Attributes:
    base: the config as for `--config`, "file.py:variant", relative to the sweep file.
    grid: the points; each a dict of dotted config field (or "config") -> value.
    fixed: fields set in every point; not part of point names.
    aliases: dotted field -> its short name in point names (default: its last part).
    description: one line for reports: what the sweep reproduces.
  """

  base: str
  grid: Sequence[Point]
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  description: str = ""


# ---------------------------------------------------------------------------
# Point names.

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 200


def pick(sweeps: Mapping[str, Callable[[], "Sweep"]], name: str, where: str) -> "Sweep":
  """sweeps[name](), or a ValueError naming the choices (a config file's get_sweep)."""
  if name not in sweeps:
    raise ValueError(f"unknown sweep {name!r} in {where}; choose one of {', '.join(sweeps)}")
  return sweeps[name]()


def short_float(value: float) -> str:
  """The shortest exact spelling: 10.0 -> "10", 1e9 -> "1e+09", 0.1234567 stays."""
  short = format(value, "g")
  return short if float(short) == value or math.isnan(value) else repr(value)


def format_value(value: Any) -> str:
  """A value as it appears in a point name: bools on/off, floats short, tuples 8x8."""
  if isinstance(value, bool):
    s = "on" if value else "off"
  elif isinstance(value, float):
    s = short_float(value)
  elif isinstance(value, (tuple, list)):
    s = "x".join(format_value(v) for v in value)
  else:
    s = str(value)
  return _UNSAFE.sub("_", s)


def alias(field: str, aliases: Mapping[str, str]) -> str:
  return aliases.get(field, field.rsplit(".", 1)[-1])


def _short_config(value: Any) -> str:
  """ "inception.py:bn_x5" -> "inception_bn_x5"; a bare variant stays as it is."""
  file, sep, variant = str(value).partition(":")
  return f"{os.path.splitext(os.path.basename(file))[0]}_{variant}" if sep else str(value)


def point_name(point: Mapping[str, Any], aliases: Mapping[str, str] | None = None) -> str:
  """ "alias=value,..." sorted; filesystem-safe; shortened with a hash when very long."""
  aliases = aliases or {}
  parts = []
  for k, v in point.items():
    value = format_value(_short_config(v) if k == CONFIG_KEY else v)
    parts.append(f"{_UNSAFE.sub('_', alias(k, aliases))}={value}")
  parts.sort()
  name = ",".join(parts) or "base"
  if len(name) > MAX_NAME:
    name = name[: MAX_NAME - 11] + "," + hashlib.sha1(name.encode()).hexdigest()[:10]
  return name


# ---------------------------------------------------------------------------
# Loading and resolving a sweep.


@dataclasses.dataclass(frozen=True)
class ResolvedPoint:
  """One point, ready to run: its name, grid values, and the trainer command."""

  name: str
  fields: Point
  config: str  # --config value, relative to the runner's cwd where possible
  overrides: dict[str, str]  # dotted field -> --config.<field> value (fixed, grid, CLI)
  workdir: str
  resolved: dict[str, Any]  # the full config (ConfigDict.to_dict()) the trainer will use

  def argv(self, python: str = sys.executable) -> list[str]:
    return [
      python,
      "-m",
      "bn_repro.main",
      f"--config={self.config}",
      f"--workdir={self.workdir}",
    ] + [f"--config.{k}={v}" for k, v in self.overrides.items()]


def load_sweep(spec: str) -> tuple[Sweep, str]:
  """`path.py:name` -> (the Sweep its get_sweep(name) returns, the file's directory)."""
  path, sep, name = spec.partition(":")
  if not sep or not name:
    raise UserError(f"expected FILE.py:NAME, got {spec!r}", field="--sweep")
  try:
    path = configs.resolve_path(path, kind="sweep")  # a file, or a packaged name: mnist_sweeps
  except UserError as e:
    raise UserError(str(e), field="--sweep") from None
  module_name = "_bn_repro_sweep_" + re.sub(r"\W", "_", os.path.abspath(path))
  try:
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
      f"cannot load {path}: {type(e).__name__}: {cli.first_line(e)}", field="--sweep"
    ) from None
  if not hasattr(module, "get_sweep"):
    raise UserError(f"{path} has no get_sweep(name)", field="--sweep")
  try:
    sweep = module.get_sweep(name)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{spec}: {type(e).__name__}: {cli.first_line(e)}", field="--sweep") from None
  if not isinstance(sweep, Sweep):
    raise UserError(
      f"{spec}: get_sweep returned {type(sweep).__name__}, not a bn_repro.sweep.Sweep",
      field="--sweep",
    )
  return sweep, os.path.dirname(os.path.abspath(path))


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
  """["field=value", ...] -> {field: value} (later wins)."""
  out = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or not field.strip():
      raise UserError(f"expected FIELD=VALUE, got {item!r}", field="--override")
    out[field.strip().removeprefix("config.")] = value
  return out


def _config_arg(spec: str, sweep_dir: str, cwd: str) -> str:
  """A "file.py:variant" relative to the sweep file, as a --config value for `cwd`."""
  file, sep, variant = configs.resolve_path(spec, root=sweep_dir).partition(":")
  path = os.path.normpath(os.path.join(sweep_dir, file))
  if not os.path.isfile(path):
    raise UserError(f"config file {path} does not exist")
  rel = os.path.relpath(path, cwd)
  path = path if rel.startswith("..") else rel
  return path + sep + variant


def render(value: Any) -> str:
  """A Python value as the trainer's `--config.<field>=` string."""
  if isinstance(value, (bool, int, str)):
    return str(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)) and all(
    isinstance(v, (bool, int, float, str)) for v in value
  ):
    return repr(tuple(value))
  raise UserError(
    f"value {value!r} of type {type(value).__name__} cannot be passed on "
    "the command line; use a bool, number, string or tuple of them"
  )


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


def _parse_config(config_arg: str, overrides: Mapping[str, str]):
  """The ConfigDict the trainer builds from these flags (same parser: config_flags)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = ["bn_repro.main", f"--config={config_arg}"] + [
    f"--config.{k}={v}" for k, v in overrides.items()
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  with warnings.catch_warnings():  # ml_collections loads config files with load_module()
    warnings.simplefilter("ignore", DeprecationWarning)
    values(argv)
  return values.config


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _get(tree: Mapping[str, Any], field: str) -> Any:
  for part in field.split("."):
    tree = tree[part]
  return tree


def resolve(
  sweep: Sweep,
  sweep_dir: str,
  workdir: str,
  cli_overrides: Mapping[str, str],
  cwd: str | None = None,
  label: str = "sweep",
) -> list[ResolvedPoint]:
  """Names, commands and full configs of every point; checks all of them first.

  Raises UserError (one line naming the point and field) for an unknown field, a
  name clash, a value the trainer would reject, or a CLI override of a grid field.
  """
  from bn_repro import validation  # pylint: disable=g-import-not-at-top

  cwd = cwd or os.getcwd()
  try:
    base = _config_arg(sweep.base, sweep_dir, cwd)
  except UserError as e:
    raise UserError(f"{label}: base {sweep.base!r}: {e}") from None
  base_file = base.rpartition(":")[0] if ":" in base else base
  for point in sweep.grid:
    if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
      raise UserError(f"{label}: a point must map config fields to values, got {point!r}")
  grid_fields = sorted({k for p in sweep.grid for k in p})
  by_alias = collections.defaultdict(list)
  for f in grid_fields:
    by_alias[alias(f, sweep.aliases)].append(f)
  for a, fields in by_alias.items():
    if len(fields) > 1:
      raise UserError(
        f"{label}: fields {', '.join(fields)} share the name {a!r} in point "
        "names; give them distinct aliases"
      )
  clash = sorted(set(cli_overrides) & set(grid_fields))
  if clash:
    raise UserError(
      f"{clash[0]} is an axis of {label}; an override would collapse it", field="--override"
    )

  keys_cache: dict[str, dict[str, Any]] = {}
  seen: dict[str, Point] = {}
  points = []
  for point in sweep.grid:
    name = point_name(point, sweep.aliases)
    if name in seen:
      raise UserError(f"{label}: points {seen[name]} and {point} have the same name {name!r}")
    seen[name] = point
    where = f"{label}: point {name}"
    config = base
    if CONFIG_KEY in point:
      value = str(point[CONFIG_KEY])
      try:
        config = _config_arg(value, sweep_dir, cwd) if ".py" in value else f"{base_file}:{value}"
      except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if config not in keys_cache:
      try:
        keys_cache[config] = _leaves(_parse_config(config, {}).to_dict())
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(
          f"{where}: config {config}: {type(e).__name__}: {cli.first_line(e)}"
        ) from None
    keys = keys_cache[config]
    values = {**sweep.fixed, **{k: v for k, v in point.items() if k != CONFIG_KEY}}
    for field in values:
      if field not in keys:
        raise UserError(f"{where}: unknown config field {field!r} (not in {config})")
    for field in cli_overrides:
      if field not in keys:
        raise UserError(f"unknown config field {field!r} (not in {config})", field="--override")
    try:
      overrides = {k: render(v) for k, v in values.items()}
    except UserError as e:
      raise UserError(f"{where}: {e}") from None
    overrides.update(cli_overrides)
    try:
      parsed = _parse_config(config, overrides)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"{where}: {type(e).__name__}: {cli.first_line(e)}") from None
    for field, value in values.items():
      if field not in cli_overrides and not _same(_get(parsed, field), value):
        raise UserError(
          f"{where}: {field}={value!r} arrives as {_get(parsed, field)!r}; "
          "use a value of the field's type"
        )
    try:
      validation.validate(parsed)
    except UserError as e:
      raise UserError(f"{where}: {e}") from None
    points.append(
      ResolvedPoint(
        name=name,
        fields=dict(point),
        config=config,
        overrides=overrides,
        workdir=os.path.join(workdir, name),
        resolved=parsed.to_dict(),
      )
    )
  if not points:
    raise UserError(f"{label} has no points")
  return points


# ---------------------------------------------------------------------------
# Files.


def read_status(point_dir: str) -> dict[str, Any]:
  """The point's status.json, or {"status": "pending"} when absent or unreadable."""
  try:
    with open(os.path.join(point_dir, STATUS_FILE)) as f:
      status = json.load(f)
  except (OSError, ValueError):
    return {"status": "pending"}
  return status if isinstance(status, dict) and "status" in status else {"status": "pending"}


def _checkpoint_step(point_dir: str) -> int | None:
  """The step of the point's latest checkpoint (None: it has none): where it resumes."""
  try:
    steps = [int(n) for n in os.listdir(os.path.join(point_dir, CHECKPOINT_DIR)) if n.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def _trainer_busy(point_dir: str) -> bool:
  """Whether a trainer process holds the workdir's own lock right now."""
  try:
    fd = os.open(os.path.join(point_dir, TRAINER_LOCK_FILE), os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)


def _is_finished(point: ResolvedPoint, status: Mapping[str, Any]) -> bool:
  """Done or diverged; a done run whose num_steps was raised since is not (it extends)."""
  if status["status"] == "diverged":
    return True
  return status["status"] == "done" and status.get("step", 0) >= point.resolved.get("num_steps", 0)


def _prepare_fresh(point: ResolvedPoint) -> None:
  """A point with no checkpoint starts over: drop a previous attempt's partial files."""
  if _checkpoint_step(point.workdir) is not None:
    return
  for name in (METRICS_FILE, "tensorboard"):
    path = os.path.join(point.workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  write_json(os.path.join(point.workdir, CONFIG_FILE), point.resolved)


def batch_groups(
  points: Sequence[ResolvedPoint], indices: Sequence[int], max_runs: int = 0, parallel: int = 1
) -> list[list[int]]:
  """`indices` in --batched groups: points whose configs differ only in batched.VARYING
  and whose latest checkpoints are at one step, at most `max_runs` a group (0: no limit;
  a larger group is split evenly); a point batched.check_batchable refuses stays alone.
  With fewer groups than `parallel` processes, the largest groups are split further
  (evenly, into parts of 2 runs or more) until every process has one. Groups come in
  the order of their first points."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from bn_repro import batched  # pylint: disable=g-import-not-at-top

  groups: dict[Any, list[int]] = {}
  for i in indices:
    point = points[i]
    try:
      batched.check_batchable(ml_collections.ConfigDict(point.resolved))
      shared = {k: v for k, v in _leaves(point.resolved).items() if k not in batched.VARYING}
      key: Any = (json.dumps(shared, sort_keys=True), _checkpoint_step(point.workdir))
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


def runner_argv(spec: str, workdir: str, cli_overrides: Mapping[str, str]) -> list[str]:
  """This runner's command for the sweep, before the flags that pick points or how they run."""
  return [sys.executable, "-m", "bn_repro.sweep", f"--sweep={spec}", f"--workdir={workdir}"] + [
    f"--override={k}={v}" for k, v in cli_overrides.items()
  ]


def _sweep_record(
  spec: str,
  sweep: Sweep,
  runner: Sequence[str],
  cli_overrides: Mapping[str, str],
  points: Sequence[ResolvedPoint],
  cwd: str,
) -> dict[str, Any]:
  return {
    "sweep": spec,
    "description": sweep.description,
    "base": sweep.base,
    "fixed": {k: v for k, v in sweep.fixed.items()},
    "aliases": dict(sweep.aliases),
    "overrides": dict(cli_overrides),
    "cwd": cwd,
    "runner_command": shlex.join(runner),
    "points": [
      {
        "name": p.name,
        "fields": p.fields,
        "config": p.config,
        "overrides": p.overrides,
        "command": shlex.join(p.argv()),
      }
      for p in points
    ],
  }


_PROBE = r"""
import json, os, platform
from importlib import metadata

def version(p):
  try:
    return metadata.version(p)
  except metadata.PackageNotFoundError:
    return None

def first(path, key):
  try:
    for line in open(path):
      if line.startswith(key):
        return line.split(":", 1)[1].strip()
  except OSError:
    return None

mem = first("/proc/meminfo", "MemTotal")
out = {
    "python": platform.python_version(),
    "platform": platform.platform(),
    "cpu": first("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "memory_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
    "packages": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy",
                                         "orbax-checkpoint", "ml-collections")},
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
}
try:
  import jax
  devices = jax.devices()
  out["backend"] = jax.default_backend()
  out["devices"] = f"{len(devices)} x {devices[0].device_kind}" if devices else "none"
except Exception as e:
  out["devices"] = f"unavailable: {type(e).__name__}: {e}"
print(json.dumps(out))
"""


def probe_environment(env: Mapping[str, str]) -> dict[str, Any]:
  """Software versions and hardware as a trainer process sees them (a child process,
  so that this runner never initializes an accelerator)."""
  try:
    r = subprocess.run(
      [sys.executable, "-c", _PROBE],
      env=dict(env),
      capture_output=True,
      text=True,
      timeout=300,
      stdin=subprocess.DEVNULL,
      check=False,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])
  except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
    return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------
# Running.


def child_env(parallel: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
  """The trainers' environment: one XLA CPU thread each when several run at once."""
  env = dict(os.environ if base is None else base)
  if parallel > 1:
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
      env["XLA_FLAGS"] = f"{flags} {PARALLEL_ENV['XLA_FLAGS']}".strip()
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", PARALLEL_ENV["XLA_PYTHON_CLIENT_PREALLOCATE"])
  return env


def _die_with_parent() -> Callable[[], None] | None:
  """A preexec_fn that asks Linux to SIGTERM the child when the runner dies (even by
  SIGKILL), so no orphan trains on; the trainer then saves a checkpoint and exits."""
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None
  parent = os.getpid()

  def preexec():
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl took effect
      os._exit(1)  # pylint: disable=protected-access

  return preexec


@dataclasses.dataclass
class _Job:
  indices: list[int]  # its points; the first one's log.txt holds the process's output
  proc: subprocess.Popen
  lock_fds: list[int]
  log: Any
  log_offset: int
  started: float


def _last_line(path: str, offset: int) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      lines = f.read().decode(errors="replace").strip().splitlines()
  except OSError:
    return ""
  return lines[-1].strip() if lines else ""


class Runner:
  """Runs points in at most `parallel` child processes; SIGINT/SIGTERM stop it cleanly.

  With `batch_command` (--batched: this runner's command, whose `--in_process` trains a
  group), the points of each of `batch_groups` share one process.
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
  ):
    self.points = points
    self.parallel = parallel
    self.cwd = cwd
    self.out = out
    self.batch_command = batch_command
    self.max_batched_runs = max_batched_runs
    self.cpu_devices = cpu_devices
    self.env = child_env(parallel)
    self.environment: dict[str, Any] | None = None
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
    from bn_repro import parallel  # pylint: disable=g-import-not-at-top

    return [f"--cpu_devices={max(1, parallel.usable_cpus() // self.parallel)}"]

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
    todo = []
    for i in selected:
      point = self.points[i]
      status = read_status(point.workdir)
      if _is_finished(point, status):
        self.outcomes["skipped"] += 1
        self.outcomes[status["status"]] += 1
        self._say(i, point, f"skipped ({status['status']} at step {status.get('step')})")
      else:
        todo.append(i)
    queue = collections.deque(
      [[i] for i in todo]
      if self.batch_command is None
      else batch_groups(self.points, todo, self.max_batched_runs, self.parallel)
    )
    running: list[_Job] = []
    busy_said: set[int] = set()
    while queue or running:
      if self.signal is not None:
        self._stop(running, queue)
      while queue and len(running) < self.parallel and self.signal is None:
        job, busy = self._start(queue.popleft())
        if job is not None:
          running.append(job)
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
      time.sleep(0.1)
    if self.signal is not None:
      self.out(f"sweep: stopped by signal {self.signal}; rerun the same command to finish")
      return 128 + self.signal
    c = self.outcomes
    self.out(
      f"sweep: {c['done']} done, {c['diverged']} diverged, {c['failed']} failed, "
      f"{c['stopped']} stopped ({c['skipped']} skipped as finished before)"
    )
    return 0 if c["done"] + c["diverged"] == len(selected) else 1

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

  def _start(self, group: Sequence[int]) -> tuple["_Job | None", list[int]]:
    """Starts the points of `group` in one process: the job (None if none was left to
    run: finished meanwhile, or busy) and the points another process holds."""
    claimed, busy = [], []
    for i in group:
      point = self.points[i]
      os.makedirs(point.workdir, exist_ok=True)
      fd = os.open(os.path.join(point.workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = not _trainer_busy(point.workdir)  # e.g. a trainer started by hand
      except BlockingIOError:
        free = False
      if not free:
        os.close(fd)
        busy.append(i)
        continue
      status = read_status(point.workdir)
      if _is_finished(point, status):  # another runner finished it while we waited
        os.close(fd)
        self.outcomes[status["status"]] += 1
        self._say(i, point, f"{status['status']} (by another runner)")
      else:
        claimed.append((i, fd, status))
    if not claimed:
      return None, busy
    points = [self.points[i] for i, _, _ in claimed]
    if self.environment is None:
      self.environment = probe_environment(self.env)
    for point in points:
      _prepare_fresh(point)
      write_json(os.path.join(point.workdir, ENVIRONMENT_FILE), self.environment)
    leader = points[0]
    argv = (
      leader.argv()
      if len(points) == 1
      else [
        *self.batch_command,
        "--in_process",
        *self._cpu_devices_flag(),
        *(f"--point={p.name}" for p in points),
      ]
    )
    header = f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(argv)}\n"
    for point in points[1:]:
      with open(os.path.join(point.workdir, LOG_FILE), "a") as f:
        f.write(f"{header}(output in {os.path.join('..', leader.name, LOG_FILE)})\n")
    log = open(os.path.join(leader.workdir, LOG_FILE), "ab")  # pylint: disable=consider-using-with
    log.write(header.encode())
    log.flush()
    offset = log.tell()
    fds = [fd for _, fd, _ in claimed]
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
      argv,
      cwd=self.cwd,
      env=self.env,
      stdin=subprocess.DEVNULL,
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
      pass_fds=fds,
      preexec_fn=_die_with_parent(),
    )
    together = f" (batched, {len(points)} points)" if len(points) > 1 else ""
    for (i, _, status), point in zip(claimed, points):
      extra = f" from step {status['step']}" if status.get("step") else ""
      self._say(i, point, f"started{extra}{together}")
    return _Job([i for i, _, _ in claimed], proc, fds, log, offset, time.monotonic()), busy

  def _finish(self, job: _Job, rc: int) -> None:
    """Each point's outcome from the exit code and its status.json (a batched group
    exits 0 when each of its points is done or diverged, 4 when stopped)."""
    job.log.close()
    seconds = f"{time.monotonic() - job.started:.1f} s"
    log_path = os.path.join(self.points[job.indices[0]].workdir, LOG_FILE)
    for i, fd in zip(job.indices, job.lock_fds):
      point = self.points[i]
      status = read_status(point.workdir)
      if rc == 0 and status["status"] == "done":
        outcome, what = "done", f"done at step {status.get('step')} ({seconds})"
      elif status["status"] == "diverged" and rc in (0, EXIT_DIVERGED, EXIT_STOPPED):
        outcome, what = "diverged", f"diverged at step {status.get('step')} ({seconds})"
      elif rc == EXIT_STOPPED or (self.signal is not None and rc != 0):
        outcome, what = "stopped", f"stopped at step {status.get('step')}; rerun to resume"
      else:
        line = _last_line(log_path, job.log_offset)
        if rc == 0:
          error = f"exited 0 but status.json says {status['status']!r}"
        elif rc < 0:
          error = f"killed by signal {-rc}" + (f"; last output: {line}" if line else "")
        else:
          error = line or f"exit code {rc} without output"
        write_json(
          os.path.join(point.workdir, STATUS_FILE),
          {"status": "failed", "error": error, "exit_code": rc},
        )
        outcome, what = "failed", f"failed (exit {rc}): {error}"
      os.close(fd)
      self.outcomes[outcome] += 1
      self._say(i, point, what)


# ---------------------------------------------------------------------------
# CLI.


def _define_flags():
  """The runner's flags (defined on first use: config files import this module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("sweep", None, "Sweep file and name, e.g. configs/mnist_sweeps.py:lr_grid.")
  flags.DEFINE_string(
    "workdir", None, "Sweep directory: sweep.json and one subdirectory per point."
  )
  flags.DEFINE_integer("parallel", 1, "Points run at once, each in its own process.")
  flags.DEFINE_multi_string(
    "override",
    [],
    "FIELD=VALUE set in every point, as the trainer's --config.FIELD=VALUE "
    "(e.g. data.source=idx, num_steps=1000). Repeatable.",
  )
  flags.DEFINE_multi_string("point", [], "Run only this point (its name). Repeatable.")
  flags.DEFINE_bool(
    "print_commands",
    False,
    "Print one command per point (with --batched: per group) and exit; writes nothing.",
  )
  flags.DEFINE_bool(
    "batched",
    False,
    "Points that differ only in seed and learning rate train together: one "
    "process and one compiled program per group (bn_repro.batched); the "
    "others run as before.",
  )
  flags.DEFINE_integer(
    "max_batched_runs",
    0,
    "With --batched: at most this many points in one group (0: no limit); "
    "a larger group is split evenly. With fewer groups than --parallel, "
    "the largest are split further (2 points a part at least).",
  )
  flags.DEFINE_bool(
    "in_process",
    False,
    "Train the selected points in this process as one batched program (what "
    "--batched starts for each group); they must differ only in seed and "
    "learning rate.",
  )
  flags.DEFINE_integer(
    "cpu_devices",
    0,
    "With --batched on a CPU host: JAX CPU devices each group's runs "
    "spread over (0: the usable CPUs / --parallel). No effect on GPU or "
    "TPU, nor where XLA_FLAGS sets a device count.",
  )
  flags.mark_flags_as_required(["sweep", "workdir"])
  return flags.FLAGS


def _fail(message: str) -> None:
  sys.exit(cli.report("bn-repro sweep", message))


def _check_workdir(workdir: str, spec: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"{workdir} exists and is not a directory", field="--workdir")
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      previous = json.load(f)["sweep"]
  except (OSError, ValueError, KeyError, TypeError):
    raise UserError(f"{path} is unreadable; use a new --workdir", field="--workdir") from None
  key = lambda s: (os.path.basename(s.partition(":")[0]), s.partition(":")[2])
  if key(previous) != key(spec):
    raise UserError(
      f"{workdir} holds the sweep {previous}, not {spec}; use a new --workdir", field="--workdir"
    )


def main(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) > 1:
    _fail(
      f"unexpected arguments {' '.join(argv[1:])!r}; fields are set with --override=FIELD=VALUE"
    )
  spec, workdir = FLAGS.sweep, FLAGS.workdir
  cwd = os.getcwd()
  try:
    if FLAGS.parallel < 1:
      raise UserError("must be >= 1", field="--parallel")
    if FLAGS.max_batched_runs < 0:
      raise UserError("must be >= 0 (0: no limit)", field="--max_batched_runs")
    if FLAGS.cpu_devices < 0:
      raise UserError("must be >= 0 (0: one per usable CPU)", field="--cpu_devices")
    if FLAGS.cpu_devices and not (FLAGS.batched or FLAGS.in_process):
      raise UserError("applies to --batched runs only; add --batched", field="--cpu_devices")
    if FLAGS.max_batched_runs and not FLAGS.batched:
      raise UserError("applies to --batched runs only; add --batched", field="--max_batched_runs")
    overrides = parse_overrides(FLAGS.override)
    sweep, sweep_dir = load_sweep(spec)
    points = resolve(sweep, sweep_dir, workdir, overrides, cwd=cwd, label=spec)
    names = [p.name for p in points]
    for name in FLAGS.point:
      if name not in names:
        raise UserError(
          f"no point {name!r} in {spec}; points: {', '.join(names[:5])}"
          f"{', ...' if len(names) > 5 else ''}",
          field="--point",
        )
    _check_workdir(workdir, spec)
  except UserError as e:
    _fail(str(e))
  wanted = set(FLAGS.point)
  selected = [i for i, p in enumerate(points) if not wanted or p.name in wanted]
  base = runner_argv(spec, workdir, overrides)
  how = []  # the flags that choose how points run, for printed commands and sweep.json
  if FLAGS.batched:
    how = (
      ["--batched"]
      + ([f"--max_batched_runs={FLAGS.max_batched_runs}"] if FLAGS.max_batched_runs else [])
      + ([f"--cpu_devices={FLAGS.cpu_devices}"] if FLAGS.cpu_devices else [])
    )

  if FLAGS.print_commands:
    groups = (
      batch_groups(points, selected, FLAGS.max_batched_runs, FLAGS.parallel)
      if FLAGS.batched
      else [[i] for i in selected]
    )
    try:
      for group in groups:
        argv = base + how + [f"--point={points[i].name}" for i in group]
        print(f"cd {shlex.quote(cwd)} && {shlex.join(argv)}")
      sys.stdout.flush()
    except BrokenPipeError:  # `| head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  if FLAGS.in_process:
    return _train_in_process([points[i] for i in selected], FLAGS.cpu_devices)

  os.makedirs(workdir, exist_ok=True)
  write_json(
    os.path.join(workdir, SWEEP_FILE),
    _sweep_record(spec, sweep, base + how, overrides, points, cwd),
  )
  for i in selected:  # pending until started
    point = points[i]
    if not os.path.exists(os.path.join(point.workdir, STATUS_FILE)):
      os.makedirs(point.workdir, exist_ok=True)
      write_json(os.path.join(point.workdir, CONFIG_FILE), point.resolved)
      write_json(os.path.join(point.workdir, STATUS_FILE), {"status": "pending"})
  runner = Runner(
    points,
    FLAGS.parallel,
    cwd,
    out=lambda s: print(s, flush=True),
    batch_command=base if FLAGS.batched else None,
    max_batched_runs=FLAGS.max_batched_runs,
    cpu_devices=FLAGS.cpu_devices,
  )
  return runner.run(selected)


def _train_in_process(points: Sequence[ResolvedPoint], cpu_devices: int) -> int:
  """Trains `points` here as one batched program (a --batched group's child), its runs
  spread over `cpu_devices` CPU devices (0: one per usable CPU) on a CPU host: exit 0
  when each is done or diverged (its status.json says which), 4 when stopped."""
  from bn_repro import (
    batched,  # pylint: disable=g-import-not-at-top
    parallel,  # pylint: disable=g-import-not-at-top
  )

  parallel.add_cpu_devices(cpu_devices)
  from absl import logging  # pylint: disable=g-import-not-at-top

  from bn_repro import train  # pylint: disable=g-import-not-at-top

  # bn_repro's own lines, and libraries' (orbax logs every save) from ERROR up, as in a
  # single run's log (bn_repro.main).
  logging.get_absl_handler().addFilter(
    lambda r: r.levelno >= pylogging.ERROR or f"{os.sep}bn_repro{os.sep}" in r.pathname
  )
  try:
    batched.train_batched(
      [_parse_config(p.config, p.overrides) for p in points], [p.workdir for p in points]
    )
  except UserError as e:
    _fail(str(e))
  except train.Stopped as e:
    print(
      f"bn-repro sweep: stopped by signal {e.signum} at step {e.step} after saving "
      "checkpoints; rerun to resume",
      file=sys.stderr,
    )
    return EXIT_STOPPED
  return 0


def run() -> None:
  """Console entry point."""
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(
    lambda argv: sys.exit(main(argv)), flags_parser=cli.one_line_flags_parser("bn-repro sweep")
  )


if __name__ == "__main__":
  # Config files import `bn_repro.sweep`; run that copy, not this `__main__` one, so
  # their Sweep objects are instances of the class we check against.
  from bn_repro import sweep as _module  # pylint: disable=import-self

  _module.run()
