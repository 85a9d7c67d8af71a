"""Learning-rate sensitivity of a sweep: final accuracy vs learning rate, one line per setting.

A line is every setting other than the learning rate and the seed (e.g. sigmoid/ReLU x BN);
its points are mean ± std over seeds, and diverged points are counted and marked.
"""

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bn_repro.report import plots
from bn_repro.report.aggregate import Group, group_points, mean_std
from bn_repro.report.results import (
  BN_FIELD,
  LR_FIELD,
  NONLINEARITY_FIELD,
  SEED_FIELD,
  SweepResults,
)
from bn_repro.report.tables import md_table, pm


def _line_label(res: SweepResults, fields: dict[str, Any]) -> str:
  parts = []
  for f, v in fields.items():
    if f == BN_FIELD:
      parts.append("BN" if v else "no BN")
    elif f == NONLINEARITY_FIELD:
      parts.append(str(v))
    else:
      parts.append(f"{res.alias(f)}={v}")
  return ", ".join(parts) or "all"


@dataclasses.dataclass
class LrLine:
  label: str
  fields: dict[str, Any]
  lrs: list[float]
  groups: list[Group]  # one per learning rate (seeds inside)


def lines(res: SweepResults) -> list[LrLine]:
  """One line per setting other than learning rate and seed; [] if the lr does not vary."""
  if LR_FIELD not in res.grid_fields or len({p.fields.get(LR_FIELD) for p in res.points}) < 2:
    return []
  found: dict[tuple, LrLine] = {}
  for g in group_points(res, drop=(SEED_FIELD,)):
    other = {f: v for f, v in g.fields.items() if f != LR_FIELD}
    key = tuple(sorted((f, json.dumps(v)) for f, v in other.items()))
    line = found.setdefault(key, LrLine(_line_label(res, other), other, [], []))
    line.lrs.append(float(g.fields[LR_FIELD]))
    line.groups.append(g)
  for line in found.values():
    order = np.argsort(line.lrs)
    line.lrs = [line.lrs[i] for i in order]
    line.groups = [line.groups[i] for i in order]
  return list(found.values())


def plot(lr_lines: Sequence[LrLine]) -> Figure:
  """Final accuracy vs learning rate (log x): mean ± std over seeds; x = diverged."""
  fig = plots.figure(10, 5)
  ax = fig.subplots()
  marked = False
  for k, line in enumerate(lr_lines):
    stats = [mean_std(g.finals()) for g in line.groups]
    mean = np.array([np.nan if m is None else m for m, _ in stats])
    std = np.array([0.0 if s is None else s for _, s in stats])
    color = f"C{k}"
    style = "-" if line.fields.get(BN_FIELD, True) else "--"
    ax.errorbar(line.lrs, mean, yerr=std, fmt="o" + style, color=color, capsize=3, label=line.label)
    ax.fill_between(line.lrs, mean - std, mean + std, color=color, alpha=0.12)
    diverged = [lr for lr, g in zip(line.lrs, line.groups) if g.count("diverged")]
    if diverged:
      ax.plot(diverged, [-0.04 - 0.025 * k] * len(diverged), "x", color=color, markersize=9, mew=2)
      marked = True
  if marked:
    ax.plot([], [], "x", color="gray", markersize=9, mew=2, label="diverged (≥ 1 seed)")
  ax.set_xscale("log")
  all_lrs = [lr for line in lr_lines for lr in line.lrs]
  ax.set_xlim(min(all_lrs) / 1.5, max(all_lrs) * 1.5)  # also when nothing finished
  ax.set_ylim(-0.06 - 0.025 * len(lr_lines), 1.02)
  ax.axhline(0, color="gray", lw=0.5)
  ax.set_xlabel("learning rate")
  ax.set_ylabel("final test accuracy")
  ax.set_title("Learning-rate sensitivity (mean ± std over seeds; x: diverged)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
  fig.tight_layout()
  return fig


def markdown(lr_lines: Sequence[LrLine]) -> list[str]:
  """Final accuracy (mean ± std over seeds) per line and learning rate, with divergences."""
  lrs = sorted({lr for line in lr_lines for lr in line.lrs})
  rows = []
  for line in lr_lines:
    cells = []
    by_lr = dict(zip(line.lrs, line.groups))
    for lr in lrs:
      g = by_lr.get(lr)
      if g is None:
        cells.append("")
        continue
      cell = pm(*mean_std(g.finals()))
      if g.count("diverged"):
        cell += f" (diverged {g.count('diverged')}/{len(g.points)})"
      cells.append(cell)
    rows.append([line.label] + cells)
  return md_table(["final accuracy"] + [f"lr {lr:g}" for lr in lrs], rows)


def claims(lr_lines: Sequence[LrLine], target: float) -> tuple[str, str]:
  """Our numbers for the paper's two learning-rate / nonlinearity claims."""
  highest, best = [], []
  for line in lr_lines:
    points = [p for g in line.groups for p in g.points]
    ran = [p for p in points if p.run is not None or p.status in ("done", "diverged")]
    if len(ran) < len(points):
      highest.append(f"{line.label}: {len(ran)} of {len(points)} points ran")
      if not ran:
        continue
      highest[-1] += ", over those"
    else:
      highest.append(f"{line.label}:")
    stable = [  # every point that ran finished (a partial sweep: those that ran)
      lr
      for lr, g in zip(line.lrs, line.groups)
      if g.count("done") and g.count("done") == len(g.points) - g.count("pending")
    ]
    all_means = [(mean_std(g.finals())[0], lr) for lr, g in zip(line.lrs, line.groups)]
    means = [(m, lr) for m, lr in all_means if m is not None]
    good = [lr for m, lr in means if m >= target]
    highest[-1] += f" {max(stable):g}" if stable else " none"
    highest[-1] += f" (≥ {target:g} up to {max(good):g})" if good else f" (never ≥ {target:g})"
    if line.groups[0].points[0].value(NONLINEARITY_FIELD) == "sigmoid" and means:
      m, lr = max(means)
      best.append(f"{line.label}: {m:.4f} (lr {lr:g})")
  higher = (
    "Highest learning rate at which every seed finished without diverging "
    f"(and the highest whose mean final accuracy is ≥ {target:g}): " + "; ".join(highest)
  )
  sigmoid = (
    "Best mean final accuracy over learning rates, sigmoid nets: " + "; ".join(best)
    if best
    else "No finished sigmoid points."
  )
  return higher, sigmoid
