"""Markdown tables and the formatting of numbers in the reports' tables and CSV files."""

import math
from collections.abc import Sequence
from typing import Any

NONE = "—"  # a number that does not exist (yet)


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
  """The lines of a Markdown table; a "|" inside a cell is escaped."""
  esc = lambda s: str(s).replace("|", "\\|")
  return ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)] + [
    "| " + " | ".join(map(esc, r)) + " |" for r in rows
  ]


def fmt(value: Any, spec: str = ".4f") -> str:
  """A number in a table: floats with `spec`, ints as written, "—" for None, nan/inf as such."""
  if value is None:
    return NONE
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return format(value, spec) if isinstance(value, float) else str(value)


def _absent(value: float | None) -> bool:
  return value is None or math.isnan(value)


def pm(mean: float | None, std: float | None, missing: str = NONE) -> str:
  """ "mean ± std" with 4 decimals; no std where it is None or NaN, `missing` without a mean."""
  if _absent(mean):
    return missing
  return f"{mean:.4f}" if _absent(std) else f"{mean:.4f} ± {std:.4f}"


def csv_cell(value: Any) -> str:
  """An exact CSV cell: repr for floats, "" for None, lists space-separated."""
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return " ".join(map(str, value))
  return str(value)


def fmt_field(value: Any) -> str:
  """A config value in a table: floats as written (0.01, 1e-05), tuples as 8x8."""
  if isinstance(value, float):
    short = format(value, "g")
    return short if float(short) == value or math.isnan(value) else repr(value)
  if isinstance(value, (list, tuple)):
    return "x".join(map(fmt_field, value))
  return fmt(value)


def times(value: float | None) -> str:
  """A speed-up: "4.50×"; "—" for None."""
  return NONE if value is None else f"{value:.2f}×"
