"""The grid language of sweep files: axes, their combinations, the Sweep, point names.

Standard library only (no JAX, no absl, no ml_collections), so that a sweep file loads
in a second and its grids can be built and named anywhere:

  from bn_repro.sweeps import grid as sw
  sw.product(sw.axis("model.use_bn", (True, False)), sw.axis("seed", range(3)))

A point is a dict of dotted config fields -> values; its key CONFIG_KEY ("config") picks
another variant of the base file ("bn_x5") or another file ("inception.py:bn_x5"). A
point's name lists its values sorted by alias ("bn=on,lr=0.1"): it depends on the point
alone, not on dict or grid order.
"""

import dataclasses
import hashlib
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Point = dict[str, Any]
CONFIG_KEY = "config"  # a point's base config variant ("bn_x5") or file ("file.py:variant")
MAX_NAME = 200  # longer point names end in a hash instead

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


# ---------------------------------------------------------------------------
# Grids.


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


def pick(sweeps: Mapping[str, Callable[[], Sweep]], name: str, where: str) -> Sweep:
  """sweeps[name](), or a ValueError naming the choices (a config file's get_sweep)."""
  if name not in sweeps:
    raise ValueError(f"unknown sweep {name!r} in {where}; choose one of {', '.join(sweeps)}")
  return sweeps[name]()


# ---------------------------------------------------------------------------
# Point names.


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
  """The field's short name in point names: its alias, else its last dotted part."""
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
