"""From a sweep file to runnable points: load it, resolve every point against its config.

`load_sweep("mnist_sweeps:lr_grid")` imports the file and calls its
get_sweep(name); `resolve` turns each point into a `ResolvedPoint`: its name, the
trainer's command line (`render` spells each value as a `--config.<field>=` string) and
the full config the trainer will build from it, parsed with the trainer's own parser and
validated, so that every bad point is refused before any of them runs.
`sweep_record` is what the runner writes to the sweep directory's record.
"""

import collections
import dataclasses
import os
import re
import runpy
import shlex
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from bn_repro import cli, configs, fields, validation
from bn_repro.errors import UserError
from bn_repro.rundir import RunDir
from bn_repro.sweeps.grid import CONFIG_KEY, Point, Sweep, alias, point_name


@dataclasses.dataclass(frozen=True)
class ResolvedPoint:
  """One point, ready to run: its name, grid values, and the trainer command."""

  name: str
  fields: Point
  config: str  # --config value, relative to the runner's cwd where possible
  overrides: dict[str, str]  # dotted field -> --config.<field> value (fixed, grid, CLI)
  workdir: str
  resolved: dict[str, Any]  # the full config (ConfigDict.to_dict()) the trainer will use

  @property
  def run_dir(self) -> RunDir:
    return RunDir(self.workdir)

  def argv(self, python: str = sys.executable) -> list[str]:
    return [
      python,
      "-m",
      "bn_repro.main",
      f"--config={self.config}",
      f"--workdir={self.workdir}",
    ] + [f"--config.{k}={v}" for k, v in self.overrides.items()]


# ---------------------------------------------------------------------------
# Loading.


def _import_file(path: str) -> dict[str, Any]:
  """The globals of a sweep file after running it."""
  try:
    return runpy.run_path(path, run_name="_bn_repro_sweep_" + re.sub(r"\W", "_", path))
  except Exception as e:
    raise UserError(
      f"cannot load {path}: {type(e).__name__}: {cli.first_line(e)}", field="--sweep"
    ) from None


def load_sweep(spec: str) -> tuple[Sweep, str]:
  """`path.py:name` -> (the Sweep its get_sweep(name) returns, the file's directory)."""
  path, sep, name = spec.partition(":")
  if not sep or not name:
    raise UserError(f"expected FILE.py:NAME, got {spec!r}", field="--sweep")
  try:
    path = configs.resolve_path(path, kind="sweep")  # a file, or a packaged name: mnist_sweeps
  except UserError as e:
    raise UserError(str(e), field="--sweep") from None
  module = _import_file(path)
  if "get_sweep" not in module:
    message = configs.wrong_kind(path, "config") if "get_config" in module else None
    raise UserError(message or f"{path} has no get_sweep(name)", field="--sweep")
  try:
    sweep = module["get_sweep"](name)
  except Exception as e:
    raise UserError(f"{spec}: {type(e).__name__}: {cli.first_line(e)}", field="--sweep") from None
  if not isinstance(sweep, Sweep):
    raise UserError(
      f"{spec}: get_sweep returned {type(sweep).__name__}, not a bn_repro.sweeps.grid.Sweep",
      field="--sweep",
    )
  return sweep, os.path.dirname(os.path.abspath(path))


# ---------------------------------------------------------------------------
# Values and configs.


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


def config_arg(spec: str, sweep_dir: str, cwd: str) -> str:
  """A "file.py:variant" relative to the sweep file, as a --config value for `cwd`."""
  file, sep, variant = configs.resolve_path(spec, root=sweep_dir).partition(":")
  path = os.path.normpath(os.path.join(sweep_dir, file))
  if not os.path.isfile(path):
    raise UserError(f"config file {path} does not exist")
  rel = os.path.relpath(path, cwd)
  path = path if rel.startswith("..") else rel
  return path + sep + variant


def parse_config(config: str, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
  """The ConfigDict the trainer builds from these flags (same parser: config_flags)."""
  argv = ["bn_repro.main", f"--config={config}"] + [
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


# ---------------------------------------------------------------------------
# Resolving.


def _check_grid(sweep: Sweep, cli_overrides: Mapping[str, str], label: str) -> None:
  """Points are mappings of fields; grid fields have distinct aliases and no CLI override."""
  for point in sweep.grid:
    if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
      raise UserError(f"{label}: a point must map config fields to values, got {point!r}")
  grid_fields = sorted({k for p in sweep.grid for k in p})
  by_alias = collections.defaultdict(list)
  for f in grid_fields:
    by_alias[alias(f, sweep.aliases)].append(f)
  for a, same_alias in by_alias.items():
    if len(same_alias) > 1:
      raise UserError(
        f"{label}: fields {', '.join(same_alias)} share the name {a!r} in point "
        "names; give them distinct aliases"
      )
  clash = sorted(set(cli_overrides) & set(grid_fields))
  if clash:
    raise UserError(
      f"{clash[0]} is an axis of {label}; an override would collapse it", field="--override"
    )


@dataclasses.dataclass
class _Resolver:
  """What every point of one sweep resolves against; caches each config's fields."""

  sweep: Sweep
  sweep_dir: str
  workdir: str
  cli_overrides: Mapping[str, str]
  cwd: str
  base: str  # the base --config value
  known: dict[str, set[str]] = dataclasses.field(default_factory=dict)

  def config(self, point: Point, where: str) -> str:
    """The point's --config value: the base, another variant of it, or another file."""
    if CONFIG_KEY not in point:
      return self.base
    value = str(point[CONFIG_KEY])
    base_file = self.base.rpartition(":")[0] if ":" in self.base else self.base
    try:
      if ".py" in value:
        return config_arg(value, self.sweep_dir, self.cwd)
      return f"{base_file}:{value}"
    except UserError as e:
      raise UserError(f"{where}: {e}") from None

  def fields_of(self, config: str, where: str) -> set[str]:
    """The dotted fields of `config` as its file builds it."""
    if config not in self.known:
      try:
        self.known[config] = set(fields.flatten(parse_config(config, {}).to_dict()))
      except Exception as e:
        raise UserError(
          f"{where}: config {config}: {type(e).__name__}: {cli.first_line(e)}"
        ) from None
    return self.known[config]

  def overrides(self, values: Point, known: set[str], config: str, where: str) -> dict[str, str]:
    """The point's --config.<field> values (fixed, grid, then CLI), every field known."""
    for field in values:
      if field not in known:
        raise UserError(f"{where}: unknown config field {field!r} (not in {config})")
    for field in self.cli_overrides:
      if field not in known:
        raise UserError(f"unknown config field {field!r} (not in {config})", field="--override")
    try:
      overrides = {k: render(v) for k, v in values.items()}
    except UserError as e:
      raise UserError(f"{where}: {e}") from None
    overrides.update(self.cli_overrides)
    return overrides

  def parse(self, config: str, overrides: Mapping[str, str], values: Point, where: str):
    """The trainer's config; refuses a value that arrives changed or that fails validation."""
    try:
      parsed = parse_config(config, overrides)
    except Exception as e:
      raise UserError(f"{where}: {type(e).__name__}: {cli.first_line(e)}") from None
    resolved = parsed.to_dict()
    for field, value in values.items():
      arrived = fields.get(resolved, field)
      if field not in self.cli_overrides and not fields.same(arrived, value):
        raise UserError(
          f"{where}: {field}={value!r} arrives as {arrived!r}; use a value of the field's type"
        )
    try:
      validation.validate(parsed)
    except UserError as e:
      raise UserError(f"{where}: {e}") from None
    return resolved

  def point(self, point: Point, name: str, label: str) -> ResolvedPoint:
    where = f"{label}: point {name}"
    config = self.config(point, where)
    values = {**self.sweep.fixed, **{k: v for k, v in point.items() if k != CONFIG_KEY}}
    overrides = self.overrides(values, self.fields_of(config, where), config, where)
    return ResolvedPoint(
      name=name,
      fields=dict(point),
      config=config,
      overrides=overrides,
      workdir=os.path.join(self.workdir, name),
      resolved=self.parse(config, overrides, values, where),
    )


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
  cwd = cwd or os.getcwd()
  try:
    base = config_arg(sweep.base, sweep_dir, cwd)
  except UserError as e:
    raise UserError(f"{label}: base {sweep.base!r}: {e}") from None
  _check_grid(sweep, cli_overrides, label)
  resolver = _Resolver(sweep, sweep_dir, workdir, cli_overrides, cwd, base)
  seen: dict[str, Point] = {}
  points = []
  for point in sweep.grid:
    name = point_name(point, sweep.aliases)
    if name in seen:
      raise UserError(f"{label}: points {seen[name]} and {point} have the same name {name!r}")
    seen[name] = point
    points.append(resolver.point(point, name, label))
  if not points:
    raise UserError(f"{label} has no points")
  return points


def sweep_record(
  spec: str,
  sweep: Sweep,
  runner: Sequence[str],
  cli_overrides: Mapping[str, str],
  points: Sequence[ResolvedPoint],
  cwd: str,
) -> dict[str, Any]:
  """The sweep directory's record: the sweep, the runner's command, every point's command."""
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
