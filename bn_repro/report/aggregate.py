"""A sweep's points one by one and over seeds: results.csv, aggregate.csv, results.md."""

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bn_repro.report.results import SEED_FIELD, PointResult, SweepResults
from bn_repro.report.tables import csv_cell, fmt, fmt_field, md_table, pm


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation; None where there are too few values."""
  if not values:
    return None, None
  a = np.asarray(values, dtype=np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


@dataclasses.dataclass
class Group:
  """Points that differ only in their seed."""

  key: tuple
  fields: dict[str, Any]
  points: list[PointResult]

  def finals(self) -> list[float]:
    return [
      p.final_accuracy
      for p in self.points
      if p.final_accuracy is not None and math.isfinite(p.final_accuracy)
    ]

  def count(self, status: str) -> int:
    return sum(p.status == status for p in self.points)


def group_points(res: SweepResults, drop: Sequence[str]) -> list[Group]:
  """Points grouped by their grid values other than `drop`, in sweep order."""
  groups: dict[tuple, Group] = {}
  for p in res.points:
    fields = {f: p.fields[f] for f in res.grid_fields if f in p.fields and f not in drop}
    key = tuple((f, json.dumps(v, sort_keys=True)) for f, v in fields.items())
    groups.setdefault(key, Group(key, fields, [])).points.append(p)
  return list(groups.values())


POINT_COLUMNS = (
  "status",
  "status_step",
  "final_step",
  "final_accuracy",
  "best_step",
  "best_accuracy",
  "steps_to_target",
  "diverged_at",
  "error",
)


def point_rows(res: SweepResults) -> list[list[str]]:
  """results.csv: header, then one row per point in sweep order."""
  rows = [["name"] + [res.alias(f) for f in res.grid_fields] + list(POINT_COLUMNS)]
  for p in res.points:
    rows.append(
      [p.name]
      + [csv_cell(p.fields.get(f)) for f in res.grid_fields]
      + [csv_cell(getattr(p, c)) for c in POINT_COLUMNS]
    )
  return rows


AGGREGATE_COLUMNS = (
  "n",
  "done",
  "diverged",
  "other",
  "final_accuracy_mean",
  "final_accuracy_std",
  "best_accuracy_mean",
  "best_accuracy_std",
  "steps_to_target_mean",
  "reached_target",
)


def aggregate(group: Group) -> dict[str, Any]:
  """Mean and sample std over seeds: final accuracy over done points, best over all with evals."""
  final_mean, final_std = mean_std(group.finals())
  best = [p.best_accuracy for p in group.points if p.best_accuracy is not None]
  best_mean, best_std = mean_std(best)
  reached = [p.steps_to_target for p in group.points if p.steps_to_target is not None]
  n, done, div = len(group.points), group.count("done"), group.count("diverged")
  return {
    "n": n,
    "done": done,
    "diverged": div,
    "other": n - done - div,
    "final_accuracy_mean": final_mean,
    "final_accuracy_std": final_std,
    "best_accuracy_mean": best_mean,
    "best_accuracy_std": best_std,
    "steps_to_target_mean": mean_std(reached)[0],
    "reached_target": len(reached),
  }


def aggregate_rows(res: SweepResults, groups: Sequence[Group]) -> list[list[str]]:
  """aggregate.csv: header, then one row per group of seeds."""
  fields = [f for f in res.grid_fields if f != SEED_FIELD]
  rows = [[res.alias(f) for f in fields] + list(AGGREGATE_COLUMNS)]
  for g in groups:
    a = aggregate(g)
    rows.append(
      [csv_cell(g.fields.get(f)) for f in fields] + [csv_cell(a[c]) for c in AGGREGATE_COLUMNS]
    )
  return rows


def aggregate_markdown(res: SweepResults, groups: Sequence[Group], target: float) -> list[str]:
  """The over-seeds table: counts, final and best accuracy (mean ± std), steps to `target`."""
  fields = [f for f in res.grid_fields if f != SEED_FIELD]
  header = [res.alias(f) for f in fields] + [
    "n",
    "done / diverged / other",
    "final accuracy (mean ± std)",
    "best accuracy",
    f"steps to {target:g} (mean; reached)",
  ]
  rows = []
  for g in groups:
    a = aggregate(g)
    rows.append(
      [fmt_field(g.fields.get(f)) for f in fields]
      + [
        str(a["n"]),
        f"{a['done']} / {a['diverged']} / {a['other']}",
        pm(a["final_accuracy_mean"], a["final_accuracy_std"]),
        pm(a["best_accuracy_mean"], a["best_accuracy_std"]),
        f"{fmt(a['steps_to_target_mean'], '.0f')}; {a['reached_target']}/{a['n']}",
      ]
    )
  return md_table(header, rows)


def points_markdown(res: SweepResults, target: float) -> list[str]:
  """The per-point table: status, final and best accuracy, steps to `target`, divergence."""
  header = (
    ["point"]
    + [res.alias(f) for f in res.grid_fields]
    + [
      "status",
      "final accuracy (step)",
      "best accuracy (step)",
      f"steps to {target:g}",
      "diverged at",
    ]
  )
  rows = []
  for p in res.points:
    status = p.status + (f": {p.error}" if p.error else "")
    rows.append(
      [p.name]
      + [fmt_field(p.fields.get(f)) for f in res.grid_fields]
      + [
        status,
        f"{fmt(p.final_accuracy)} ({fmt(p.final_step)})",
        f"{fmt(p.best_accuracy)} ({fmt(p.best_step)})",
        fmt(p.steps_to_target),
        fmt(p.diverged_at),
      ]
    )
  return md_table(header, rows)


def has_seeds(res: SweepResults) -> bool:
  """Whether the sweep has a seed axis (and so an over-seeds table)."""
  return SEED_FIELD in res.grid_fields


def results_markdown(res: SweepResults, target: float) -> str:
  """results.md: the over-seeds table (with a seed axis), then every point."""
  md = [f"# Results: `{res.spec}`", ""]
  if has_seeds(res):
    groups = group_points(res, drop=(SEED_FIELD,))
    md += ["## Over seeds", ""] + aggregate_markdown(res, groups, target) + [""]
  md += ["## Points", ""] + points_markdown(res, target) + [""]
  return "\n".join(md)
