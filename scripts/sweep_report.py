"""Results of a sweep directory: tables, figures and REPORT.md (paper vs. ours).

Usage:
  python scripts/sweep_report.py --sweep_dir=runs/lr [--out_dir=DIR] \
      [--target_accuracy=0.95] [--figure1_lr=0.5]

Reads <sweep_dir>/sweep.json (written by `python -m bn_repro.sweep`) and each point's
config.json, status.json, metrics.jsonl and environment.json. Writes into --out_dir
(default: the sweep dir):
  results.csv, results.md  one row per point: fields, status, final and best eval
                           accuracy (with steps), steps to the target accuracy, the
                           divergence step; results.md also aggregates over seeds
                           (mean ± std, n) when the sweep has a seed axis
  aggregate.csv            that aggregate (only with a seed axis)
  lr_sensitivity.png       final accuracy vs learning rate, one line per other setting
                           (e.g. sigmoid/ReLU x BN), mean ± std over seeds, diverged
                           points as x at the bottom (when the learning rate varies)
  figure1.png, figure1{a,b,c}.png, figure1.csv, figure1.md
                           Figure 1 (scripts/figure1.py) for a BN / no-BN sigmoid pair
                           whose configs differ only in model.use_bn
  figure2.png, figure3.csv, figure3.md
                           Figures 2 and 3 when the points are the paper's Inception
                           variants (the variant at the end of each point's config spec,
                           e.g. inception_small:bn_x5; any subset with
                           `inception`): eval accuracy vs step per variant, and steps to
                           Inception's best accuracy, max accuracy and speed-up next to
                           the paper's numbers
  REPORT.md                the paper's claim next to ours for each figure and table, the
                           exact commands, and the software and hardware the points ran on
Exit codes: 0 written; 2 bad input (one line on stderr, nothing written).
"""

import csv
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

# Make `bn_repro` importable when run as `python scripts/sweep_report.py`.
_SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_SCRIPTS) not in sys.path:
  sys.path.insert(0, os.path.dirname(_SCRIPTS))

from bn_repro import cli  # pylint: disable=wrong-import-position
from bn_repro.errors import UserError  # pylint: disable=wrong-import-position
from bn_repro.rundir import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep_dir", None, "Sweep directory (holds sweep.json).")
flags.DEFINE_string(
  "out_dir", None, "Where to write the tables, figures and REPORT.md (default: the sweep dir)."
)
flags.DEFINE_float("target_accuracy", 0.95, "Eval accuracy whose first step is reported.")
flags.DEFINE_float(
  "figure1_lr",
  0.5,
  "With several BN/no-BN sigmoid pairs, Figure 1 uses the "
  "smallest seed and the learning rate closest to this (log scale; 0.5 is "
  "the mnist_mlp.py preset).",
)

LR_FIELD = "optimizer.learning_rate"
SEED_FIELD = "seed"
BN_FIELD = "model.use_bn"
NONLINEARITY_FIELD = "model.nonlinearity"
ACC_KEY = "eval/accuracy"
TOP5_KEY = "eval/top5"
SWEEP_FILE = "sweep.json"


def _figure1():
  """scripts/figure1.py as a module (one copy, as its tests load it)."""
  if "figure1" not in sys.modules:
    spec = importlib.util.spec_from_file_location("figure1", os.path.join(_SCRIPTS, "figure1.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["figure1"] = module
    spec.loader.exec_module(module)
  return sys.modules["figure1"]


# ---------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass
class PointResult:
  """One point of the sweep: its settings, status and eval summary."""

  name: str
  fields: dict[str, Any]  # grid values (dotted field -> value)
  command: str
  config: dict[str, Any]  # config.json ({} before the point started)
  status: str
  config_spec: str = (
    ""  # sweep.json's --config value, e.g. "bn_repro/configs/inception_small.py:bn_x5"
  )
  status_step: int | None = None
  error: str = ""
  run: Any = None  # figure1.Run when the point has eval events
  environment: dict[str, Any] | None = None
  final_step: int | None = None
  final_accuracy: float | None = None
  best_step: int | None = None
  best_accuracy: float | None = None
  steps_to_target: int | None = None
  top5: dict[int, float] = dataclasses.field(default_factory=dict)  # eval/top5 by step

  @property
  def diverged_at(self) -> int | None:
    return self.status_step if self.status == "diverged" else None

  def value(self, field: str) -> Any:
    """A config value: the resolved config.json, else the grid value."""
    node: Any = self.config
    for part in field.split("."):
      if not isinstance(node, dict) or part not in node:
        return self.fields.get(field)
      node = node[part]
    return node


@dataclasses.dataclass
class SweepResults:
  spec: str
  description: str
  record: dict[str, Any]  # sweep.json
  aliases: dict[str, str]
  grid_fields: list[str]
  points: list[PointResult]

  def alias(self, field: str) -> str:
    return self.aliases.get(field, field.rsplit(".", 1)[-1])


def _read_json(path: str) -> dict[str, Any]:
  """A JSON object from `path`; UserError if unreadable or not an object."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path} does not hold a JSON object")
  return obj


def load_sweep(sweep_dir: str, target: float) -> SweepResults:
  """Reads sweep.json and every point's files; UserError on anything unreadable."""
  if not os.path.isdir(sweep_dir):
    raise UserError(f"{sweep_dir} is not a directory", field="--sweep_dir")
  path = os.path.join(sweep_dir, SWEEP_FILE)
  if not os.path.isfile(path):
    raise UserError(
      f"{path} does not exist; is this a sweep dir (python -m bn_repro.sweep)?", field="--sweep_dir"
    )
  record = _read_json(path)
  if not isinstance(record.get("points"), list) or not all(
    isinstance(p, dict) and isinstance(p.get("name"), str) for p in record["points"]
  ):
    raise UserError(f"{path} has no list of named points", field="--sweep_dir")
  points = [_load_point(sweep_dir, p, target) for p in record["points"]]
  grid_fields = []
  for p in points:
    grid_fields += [f for f in p.fields if f not in grid_fields]
  return SweepResults(
    spec=record.get("sweep", "?"),
    description=record.get("description", ""),
    record=record,
    aliases=record.get("aliases") or {},
    grid_fields=grid_fields,
    points=points,
  )


def _load_point(sweep_dir: str, entry: dict[str, Any], target: float) -> PointResult:
  figure1 = _figure1()
  d = os.path.join(sweep_dir, entry["name"])
  fields = dict(entry.get("fields") or {})
  p = PointResult(
    name=entry["name"],
    fields=fields,
    command=entry.get("command", ""),
    config={},
    status="pending",
    config_spec=str(entry.get("config") or fields.get("config") or ""),
  )
  if not os.path.isdir(d):
    return p
  if os.path.isfile(os.path.join(d, "config.json")):
    p.config = _read_json(os.path.join(d, "config.json"))
  if os.path.isfile(os.path.join(d, "status.json")):
    status = _read_json(os.path.join(d, "status.json"))
    p.status = str(status.get("status", "pending"))
    p.status_step = status.get("step")
    p.error = str(status.get("error", ""))
  if os.path.isfile(os.path.join(d, "environment.json")):
    p.environment = _read_json(os.path.join(d, "environment.json"))
  metrics = os.path.join(d, "metrics.jsonl")
  if not os.path.isfile(metrics):
    return p
  try:
    events = RunDir(d).metrics()
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {metrics}: {e}") from None
  if not any(ACC_KEY in e for e in events):
    return p
  p.run = figure1.load_run(d)
  p.top5 = {
    e["step"]: float(e[TOP5_KEY])
    for e in events
    if isinstance(e.get("step"), int)
    and isinstance(e.get(TOP5_KEY), (int, float))
    and not isinstance(e.get(TOP5_KEY), bool)
  }
  s = figure1.summarize(p.run)
  p.best_step, p.best_accuracy = s["best_step"], s["best_accuracy"]
  if p.status == "done":
    p.final_step, p.final_accuracy = s["final_step"], s["final_accuracy"]
  p.steps_to_target = next(
    (step for step in sorted(p.run.accuracy) if p.run.accuracy[step] >= target), None
  )
  return p


# ---------------------------------------------------------------------------
# Tables.


def _cell(value: Any) -> str:
  """Exact CSV cell: repr for floats, '' for None."""
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return " ".join(map(str, value))
  return str(value)


def _fmt(value: Any, spec: str = ".4f") -> str:
  if value is None:
    return "—"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return format(value, spec) if isinstance(value, float) else str(value)


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
      + [_cell(p.fields.get(f)) for f in res.grid_fields]
      + [_cell(getattr(p, c)) for c in POINT_COLUMNS]
    )
  return rows


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
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
  final_mean, final_std = _mean_std(group.finals())
  best = [p.best_accuracy for p in group.points if p.best_accuracy is not None]
  best_mean, best_std = _mean_std(best)
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
    "steps_to_target_mean": _mean_std(reached)[0],
    "reached_target": len(reached),
  }


def aggregate_rows(res: SweepResults, groups: Sequence[Group]) -> list[list[str]]:
  fields = [f for f in res.grid_fields if f != SEED_FIELD]
  rows = [[res.alias(f) for f in fields] + list(AGGREGATE_COLUMNS)]
  for g in groups:
    a = aggregate(g)
    rows.append([_cell(g.fields.get(f)) for f in fields] + [_cell(a[c]) for c in AGGREGATE_COLUMNS])
  return rows


def _fmt_field(value: Any) -> str:
  """A grid value in a Markdown table: floats as written (0.01, 1e-05), tuples 8x8."""
  if isinstance(value, float):
    short = format(value, "g")
    return short if float(short) == value or math.isnan(value) else repr(value)
  if isinstance(value, (list, tuple)):
    return "x".join(map(_fmt_field, value))
  return _fmt(value)


def _pm(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "—"
  return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  esc = lambda s: str(s).replace("|", "\\|")
  return ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)] + [
    "| " + " | ".join(map(esc, r)) + " |" for r in rows
  ]


def aggregate_markdown(res: SweepResults, groups: Sequence[Group], target: float) -> list[str]:
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
      [_fmt_field(g.fields.get(f)) for f in fields]
      + [
        str(a["n"]),
        f"{a['done']} / {a['diverged']} / {a['other']}",
        _pm(a["final_accuracy_mean"], a["final_accuracy_std"]),
        _pm(a["best_accuracy_mean"], a["best_accuracy_std"]),
        f"{_fmt(a['steps_to_target_mean'], '.0f')}; {a['reached_target']}/{a['n']}",
      ]
    )
  return _md_table(header, rows)


def points_markdown(res: SweepResults, target: float) -> list[str]:
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
      + [_fmt_field(p.fields.get(f)) for f in res.grid_fields]
      + [
        status,
        f"{_fmt(p.final_accuracy)} ({_fmt(p.final_step)})",
        f"{_fmt(p.best_accuracy)} ({_fmt(p.best_step)})",
        _fmt(p.steps_to_target),
        _fmt(p.diverged_at),
      ]
    )
  return _md_table(header, rows)


# ---------------------------------------------------------------------------
# Learning-rate sensitivity.


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


def lr_lines(res: SweepResults) -> list[LrLine]:
  """One line per setting other than learning rate and seed; [] if the lr does not vary."""
  if LR_FIELD not in res.grid_fields or len({p.fields.get(LR_FIELD) for p in res.points}) < 2:
    return []
  lines: dict[tuple, LrLine] = {}
  for g in group_points(res, drop=(SEED_FIELD,)):
    other = {f: v for f, v in g.fields.items() if f != LR_FIELD}
    key = tuple(sorted((f, json.dumps(v)) for f, v in other.items()))
    line = lines.setdefault(key, LrLine(_line_label(res, other), other, [], []))
    line.lrs.append(float(g.fields[LR_FIELD]))
    line.groups.append(g)
  for line in lines.values():
    order = np.argsort(line.lrs)
    line.lrs = [line.lrs[i] for i in order]
    line.groups = [line.groups[i] for i in order]
  return list(lines.values())


def draw_lr_sensitivity(lines: Sequence[LrLine], path: str) -> None:
  """Final accuracy vs learning rate (log x): mean ± std over seeds; x = diverged."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(10, 5))
  marked = False
  for k, line in enumerate(lines):
    stats = [_mean_std(g.finals()) for g in line.groups]
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
  all_lrs = [lr for line in lines for lr in line.lrs]
  ax.set_xlim(min(all_lrs) / 1.5, max(all_lrs) * 1.5)  # also when nothing finished
  ax.set_ylim(-0.06 - 0.025 * len(lines), 1.02)
  ax.axhline(0, color="gray", lw=0.5)
  ax.set_xlabel("learning rate")
  ax.set_ylabel("final test accuracy")
  ax.set_title("Learning-rate sensitivity (mean ± std over seeds; x: diverged)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def lr_markdown(lines: Sequence[LrLine]) -> list[str]:
  lrs = sorted({lr for line in lines for lr in line.lrs})
  rows = []
  for line in lines:
    cells = []
    by_lr = dict(zip(line.lrs, line.groups))
    for lr in lrs:
      g = by_lr.get(lr)
      if g is None:
        cells.append("")
        continue
      cell = _pm(*_mean_std(g.finals()))
      if g.count("diverged"):
        cell += f" (diverged {g.count('diverged')}/{len(g.points)})"
      cells.append(cell)
    rows.append([line.label] + cells)
  return _md_table(["final accuracy"] + [f"lr {lr:g}" for lr in lrs], rows)


def lr_claims(lines: Sequence[LrLine], target: float) -> tuple[str, str]:
  """Our numbers for the paper's two learning-rate / nonlinearity claims."""
  highest, best = [], []
  for line in lines:
    stable = [
      lr for lr, g in zip(line.lrs, line.groups) if g.points and g.count("done") == len(g.points)
    ]
    good = [
      lr
      for lr, g in zip(line.lrs, line.groups)
      if g.finals() and _mean_std(g.finals())[0] >= target
    ]
    highest.append(f"{line.label}: {max(stable):g}" if stable else f"{line.label}: none")
    highest[-1] += f" (≥ {target:g} up to {max(good):g})" if good else f" (never ≥ {target:g})"
    means = [
      (m, lr)
      for lr, g in zip(line.lrs, line.groups)
      for m in [_mean_std(g.finals())[0]]
      if m is not None
    ]
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


# ---------------------------------------------------------------------------
# Figure 1.


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix.rstrip("."): tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


def _differ(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
  """Fields whose values differ; fields only one config has (added later) do not count."""
  return {k for k in set(a) & set(b) if a[k] != b[k]}


def figure1_pair(res: SweepResults, lr_hint: float) -> tuple[PointResult, PointResult] | None:
  """A BN and a no-BN sigmoid point whose configs differ only in model.use_bn.

  With several such pairs: both done first, then the smallest seed, then the learning
  rate closest to `lr_hint` on a log scale, then sweep order.
  """
  sigmoid = [
    (p, _flat(p.config))
    for p in res.points
    if p.run is not None and p.config and p.value(NONLINEARITY_FIELD) == "sigmoid"
  ]
  pairs = [
    (bn, nobn)
    for bn, fb in sigmoid
    if fb.get(BN_FIELD) is True
    for nobn, fn in sigmoid
    if fn.get(BN_FIELD) is False and _differ(fb, fn) == {BN_FIELD}
  ]
  if not pairs:
    return None

  def rank(pair):
    bn, _ = pair
    lr = bn.value(LR_FIELD) or lr_hint
    seed = bn.value(SEED_FIELD) or 0
    both_done = all(p.status == "done" for p in pair)
    return (
      not both_done,
      seed,
      abs(math.log(lr / lr_hint)) if lr > 0 else math.inf,
      res.points.index(bn),
    )

  return min(pairs, key=rank)


def figure1_claims(bn: PointResult, nobn: PointResult) -> tuple[str, str]:
  figure1 = _figure1()
  steps = [s for s in sorted(set(bn.run.accuracy) & set(nobn.run.accuracy)) if s > 0]
  ahead = sum(bn.run.accuracy[s] > nobn.run.accuracy[s] for s in steps)
  sb, sn = figure1.summarize(bn.run), figure1.summarize(nobn.run)
  acc = (
    f"BN ahead at {ahead} of {len(steps)} common eval steps after step 0; last eval "
    f"(step {_fmt(sb['final_step'])} / {_fmt(sn['final_step'])}): "
    f"{_fmt(sb['final_accuracy'])} with BN vs {_fmt(sn['final_accuracy'])} without"
  )
  db, dn = sb["drift"], sn["drift"]
  drift = (
    "drift (range / mean 15–85 width) of p15, p50, p85: with BN "
    f"{_fmt(db['p15'], '.2f')}, {_fmt(db['p50'], '.2f')}, {_fmt(db['p85'], '.2f')}; "
    f"without {_fmt(dn['p15'], '.2f')}, {_fmt(dn['p50'], '.2f')}, "
    f"{_fmt(dn['p85'], '.2f')}"
  )
  return acc, drift


# ---------------------------------------------------------------------------
# Figures 2 and 3: the paper's five Inception variants.

BASELINE = "inception"
# variant -> (the paper's name, its steps to 72.2% in millions (None: never), its max top-1).
PAPER_VARIANTS = {
  "inception": ("Inception", 31.0, 0.722),
  "bn_baseline": ("BN-Baseline", 13.3, 0.727),
  "bn_x5": ("BN-x5", 2.1, 0.730),
  "bn_x30": ("BN-x30", 2.7, 0.748),
  "bn_x5_sigmoid": ("BN-x5-Sigmoid", None, 0.698),
}
PAPER_TARGET = 0.722  # Inception's max top-1: Figure 3's target
NEVER = "never"


def variant_of(p: PointResult) -> str | None:
  """ ".../inception_small.py:bn_x30,cifar10" -> "bn_x30"; None if not a paper variant."""
  _, sep, variant = p.config_spec.rpartition(":")
  variant = variant.partition(",")[0]
  return variant if sep and variant in PAPER_VARIANTS else None


def paper_speedup(variant: str) -> float | None:
  """Inception's steps to 72.2% / the variant's, from the paper's table."""
  steps = PAPER_VARIANTS[variant][1]
  return PAPER_VARIANTS[BASELINE][1] / steps if steps else None


@dataclasses.dataclass
class VariantRow:
  """One variant's Figure 3 numbers (ours)."""

  variant: str
  point: PointResult
  steps: int | None  # first eval step at or above Inception's best accuracy
  speedup: float | None  # Inception's steps / ours

  @property
  def name(self) -> str:
    return PAPER_VARIANTS[self.variant][0]

  @property
  def top5_at_max(self) -> float | None:
    return self.point.top5.get(self.point.best_step)

  @property
  def never(self) -> bool:
    """Evaluated, but never at or above the baseline's best."""
    return self.steps is None and self.point.run is not None


@dataclasses.dataclass
class Figure3:
  baseline_best: float | None  # Inception's best eval accuracy (None: no evals yet)
  rows: list[VariantRow]  # one per variant, in the paper's order
  points: list[PointResult]  # every point of the sweep (repeats of a variant included)
  num_classes: int | None

  def row(self, variant: str) -> VariantRow | None:
    return next((r for r in self.rows if r.variant == variant), None)


def figure3(res: SweepResults) -> Figure3 | None:
  """Figure 3's table when every point is a paper variant and one is `inception`.

  With several points of one variant (e.g. seeds), the first in sweep order is used.
  """
  variants = [variant_of(p) for p in res.points]
  if not res.points or None in variants or BASELINE not in variants:
    return None
  first: dict[str, PointResult] = {}
  for v, p in zip(variants, res.points):
    first.setdefault(v, p)
  best = first[BASELINE].best_accuracy
  reach = {}
  for v, p in first.items():
    reach[v] = (
      None
      if p.run is None or best is None
      else next((s for s in sorted(p.run.accuracy) if p.run.accuracy[s] >= best), None)
    )
  base_steps = reach[BASELINE]
  rows = [
    VariantRow(
      v, first[v], reach[v], base_steps / reach[v] if base_steps is not None and reach[v] else None
    )
    for v in PAPER_VARIANTS
    if v in first
  ]
  classes = [p.value("model.num_classes") for p in res.points]
  classes = [c for c in classes if isinstance(c, int) and c > 0]
  return Figure3(best, rows, list(res.points), classes[0] if classes else None)


FIGURE3_COLUMNS = (
  "variant",
  "model",
  "point",
  "status",
  "diverged_at",
  "baseline_best_accuracy",
  "steps_to_baseline_best",
  "speedup",
  "max_accuracy",
  "max_accuracy_step",
  "top5_at_max",
  "paper_steps_to_72.2_millions",
  "paper_max_accuracy",
  "paper_speedup",
)


def figure3_rows(fig: Figure3) -> list[list[str]]:
  """figure3.csv: header, then one row per variant ("never": evaluated, never reached)."""
  rows = [list(FIGURE3_COLUMNS)]
  for r in fig.rows:
    paper_steps = PAPER_VARIANTS[r.variant][1]
    rows.append(
      [
        r.variant,
        r.name,
        r.point.name,
        r.point.status,
        _cell(r.point.diverged_at),
        _cell(fig.baseline_best),
        NEVER if r.never else _cell(r.steps),
        _cell(r.speedup),
        _cell(r.point.best_accuracy),
        _cell(r.point.best_step),
        _cell(r.top5_at_max),
        NEVER if paper_steps is None else _cell(paper_steps),
        _cell(PAPER_VARIANTS[r.variant][2]),
        _cell(paper_speedup(r.variant)),
      ]
    )
  return rows


def _times(value: float | None) -> str:
  return "—" if value is None else f"{value:.2f}×"


def figure3_markdown(fig: Figure3) -> list[str]:
  """Figure 3's table, ours next to the paper's."""
  header = [
    "model",
    "point",
    "status",
    f"steps to {_fmt(fig.baseline_best)} (Inception's best)",
    "speed-up",
    "max accuracy (step)",
    "top-5 at max",
    "paper: steps to 72.2%",
    "paper: max top-1",
    "paper: speed-up",
  ]
  rows = []
  for r in fig.rows:
    p = r.point
    status = p.status + (f" at step {p.diverged_at}" if p.diverged_at is not None else "")
    paper_steps = PAPER_VARIANTS[r.variant][1]
    rows.append(
      [
        r.name,
        f"`{p.name}`",
        status,
        NEVER if r.never else _fmt(r.steps),
        _times(r.speedup),
        f"{_fmt(p.best_accuracy)} ({_fmt(p.best_step)})",
        _fmt(r.top5_at_max),
        NEVER if paper_steps is None else f"{paper_steps:.1f}M",
        f"{100 * PAPER_VARIANTS[r.variant][2]:.1f}%",
        _times(paper_speedup(r.variant)),
      ]
    )
  return _md_table(header, rows) + [
    "",
    "Steps: the first eval step whose accuracy is at or above Inception's best eval "
    "accuracy (the paper: 72.2%, Inception's max); speed-up: Inception's steps / the "
    "variant's. Paper numbers from Figure 3 (BN-x30's 74.8% after 6M steps).",
  ]


def figure3_claims(fig: Figure3) -> tuple[str, str, str]:
  """Ours for: (a) BN reaches the baseline's best in a fraction of its steps, (b) BN-x5-Sigmoid
  learns, (c) divergence."""
  base = fig.row(BASELINE)
  if fig.baseline_best is None:
    fewer = "Inception has no eval yet."
  else:
    parts = []
    for r in fig.rows:
      if r.variant == BASELINE:
        continue
      if r.point.run is None:
        parts.append(f"{r.name}: no eval yet")
      elif r.steps is None:
        parts.append(f"{r.name}: never (max {_fmt(r.point.best_accuracy)})")
      elif not base.steps or not r.steps:
        parts.append(f"{r.name}: {r.steps} steps")
      else:
        parts.append(
          f"{r.name}: {r.steps} steps ({r.steps / base.steps:.2f} of Inception's; "
          f"{r.speedup:.2f}× fewer)"
        )
    fewer = (
      f"Inception's best {_fmt(fig.baseline_best)} first at step {base.steps}. "
      + ("; ".join(parts) if parts else "No BN variant in this sweep")
      + "."
    )
  sig = fig.row("bn_x5_sigmoid")
  if sig is None:
    sigmoid = "BN-x5-Sigmoid is not in this sweep."
  elif sig.point.best_accuracy is None:
    sigmoid = "BN-x5-Sigmoid has no eval yet."
  elif fig.num_classes is None:
    sigmoid = (
      f"BN-x5-Sigmoid max accuracy {_fmt(sig.point.best_accuracy)} (step "
      f"{sig.point.best_step}); chance unknown (no model.num_classes)."
    )
  else:
    chance = 1 / fig.num_classes
    ratio = sig.point.best_accuracy / chance
    verdict = "learns" if ratio >= 2 else "does not clearly learn (under 2× chance)"
    sigmoid = (
      f"BN-x5-Sigmoid max accuracy {_fmt(sig.point.best_accuracy)} (step "
      f"{sig.point.best_step}) = {ratio:.1f}× chance (1/{fig.num_classes} = "
      f"{chance:.4f}): {verdict}."
    )
  diverged = [p for p in fig.points if p.status == "diverged"]
  if diverged:
    div = (
      "Diverged: "
      + "; ".join(
        f"{PAPER_VARIANTS[variant_of(p)][0]} (`{p.name}`) at step {_fmt(p.diverged_at)}"
        + (
          f", last eval {_fmt(p.run.accuracy[max(p.run.accuracy)])} at step {max(p.run.accuracy)}"
          if p.run is not None and p.run.accuracy
          else ""
        )
        for p in diverged
      )
      + "."
    )
  else:
    div = f"None of the {len(fig.points)} points diverged."
  return fewer, sigmoid, div


def draw_figure2(fig3: Figure3, path: str) -> None:
  """Eval accuracy vs step, one line per variant; dashed: Inception's best; o: first step
  at or above it; x: diverged."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(9, 5))
  for r in fig3.rows:
    run = r.point.run
    if run is None or not run.accuracy:
      continue
    color = f"C{list(PAPER_VARIANTS).index(r.variant)}"
    steps = sorted(run.accuracy)
    acc = [run.accuracy[s] for s in steps]
    ax.plot(
      steps,
      acc,
      "-",
      color=color,
      marker="." if len(steps) <= 50 else None,
      label=r.name
      + (f" (diverged at {r.point.diverged_at})" if r.point.diverged_at is not None else ""),
    )
    if r.steps is not None:
      ax.plot([r.steps], [run.accuracy[r.steps]], "o", color=color, mfc="none", markersize=9)
    if r.point.diverged_at is not None:
      ax.plot([steps[-1]], [acc[-1]], "x", color=color, markersize=10, mew=2)
  if fig3.baseline_best is not None:
    ax.axhline(
      fig3.baseline_best,
      color="gray",
      ls="--",
      lw=1,
      label=f"Inception's best ({fig3.baseline_best:.4f})",
    )
  ax.set_xlabel("training step")
  ax.set_ylabel("eval accuracy (top-1)")
  ax.set_title("Figure 2: eval accuracy vs training step (o: first at Inception's best)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------------------
# REPORT.md.

PAPER = {
  "fig1a": "Test accuracy with BN is higher throughout training (no numbers "
  "printed; public reproductions: about 97.5–98.2% with BN vs 97.1–97.7% without "
  "after 50k steps).",
  "fig1bc": "Without BN the 15th/50th/85th percentiles of a last-layer "
  "sigmoid input drift a lot over training; with BN they are far more stable.",
  "higher_lr": "BN allows much higher learning rates without divergence "
  "(BN-x5 / BN-x30 train at 5x / 30x Inception's rate, which diverges "
  "without BN; Sec. 3.3, 4.2.1).",
  "sigmoid": "BN makes saturating nonlinearities trainable (BN-x5-Sigmoid reaches "
  "69.8% top-1; Inception with sigmoid and no BN stays at chance; Sec. 4.2.1).",
  "fig2": "Figure 2: BN-x5 and BN-x30 pass Inception's best (72.2%) long before Inception "
  "gets there; BN-x30 ends highest (74.8%).",
  "fig3_fewer": "BN variants reach Inception's best (72.2%) in a fraction of its 31.0M steps: "
  + "; ".join(
    f"{PAPER_VARIANTS[v][0]} {PAPER_VARIANTS[v][1]:.1f}M "
    f"({PAPER_VARIANTS[v][1] / PAPER_VARIANTS[BASELINE][1]:.3f}; "
    f"{paper_speedup(v):.2f}× fewer)"
    for v in ("bn_baseline", "bn_x5", "bn_x30")
  )
  + "; BN-x5-Sigmoid never (Figure 3).",
  "fig3_sigmoid": "BN-x5-Sigmoid learns: 69.8% max top-1, though it never reaches 72.2%; "
  "Inception with sigmoid and no BN never beats chance (1/1000; Sec. 4.2.1).",
  "fig3_diverged": "The five variants all train (Figure 2); Inception without BN at BN-x5's "
  'learning rate diverges to "machine infinity" (Sec. 4.2.1).',
}


def _environment_lines(res: SweepResults) -> list[str]:
  envs: dict[str, list[str]] = {}
  for p in res.points:
    if p.environment is not None:
      envs.setdefault(json.dumps(p.environment, sort_keys=True), []).append(p.name)
  if not envs:
    return [
      "Not recorded (no point has environment.json; points run by "
      "`python -m bn_repro.sweep` record it)."
    ]
  out = []
  for text, names in envs.items():
    e = json.loads(text)
    if "error" in e:
      out.append(f"- {len(names)} point(s): probe failed: {e['error']}")
      continue
    pk = e.get("packages", {})
    software = ", ".join(f"{k} {v}" for k, v in [("python", e.get("python"))] + sorted(pk.items()))
    out += [
      f"- {len(names)} point(s) ran with: {software}",
      f"  - hardware: {e.get('cpu')}, {e.get('cpu_count')} CPUs "
      f"({e.get('cpus_usable')} usable), {e.get('memory_gib')} GiB; jax devices: "
      f"{e.get('devices')} (backend {e.get('backend')}); {e.get('platform')}",
      f"  - XLA_FLAGS: `{e.get('xla_flags') or ''}`",
    ]
  return out


def make_report(
  res: SweepResults,
  target: float,
  pair,
  lines: Sequence[LrLine],
  seeds: bool,
  groups: Sequence[Group],
  written: Sequence[str],
  report_command: str,
  fig3: Figure3 | None = None,
) -> str:
  counts: dict[str, int] = {}
  for p in res.points:
    counts[p.status] = counts.get(p.status, 0) + 1
  out = [f"# Sweep report: `{res.spec}`", ""]
  if res.description:
    out += [res.description + ".", ""]
  out += [
    f"{len(res.points)} points: "
    + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    + f". Written {datetime.datetime.now().isoformat(timespec='seconds')}.",
    "",
  ]

  out += ["## Paper vs. ours", ""]
  rows = []
  if pair is not None:
    acc, drift = figure1_claims(*pair)
    rows += [["Figure 1(a)", PAPER["fig1a"], acc], ["Figure 1(b, c)", PAPER["fig1bc"], drift]]
  if lines:
    higher, sigmoid = lr_claims(lines, target)
    rows += [
      ["Learning rate", PAPER["higher_lr"], higher],
      ["Saturating nonlinearity", PAPER["sigmoid"], sigmoid],
    ]
  if fig3 is not None:
    fewer, sigmoid, div = figure3_claims(fig3)
    rows += [
      ["Figure 3: steps to Inception's best", PAPER["fig3_fewer"], fewer],
      ["Figure 3: BN-x5-Sigmoid", PAPER["fig3_sigmoid"], sigmoid],
      ["Figure 2: divergence", PAPER["fig3_diverged"], div],
    ]
  if rows:
    out += _md_table(["", "paper (Ioffe & Szegedy, 2015)", "ours"], rows)
  else:
    out.append("This sweep has neither a BN / no-BN sigmoid pair nor a learning-rate axis.")
  out.append("")

  if pair is not None:
    figure1 = _figure1()
    bn, nobn = pair
    out += [
      "## Figure 1",
      "",
      f"Pair: `{bn.name}` (BN) and `{nobn.name}` (no BN).",
      "",
      "![Figure 1](figure1.png)",
      "",
      figure1.summary_table(bn.run, nobn.run),
      "Every eval step: [figure1.csv](figure1.csv), [figure1.md](figure1.md).",
      "",
    ]
  if fig3 is not None:
    used = {r.point.name for r in fig3.rows}
    out += (
      [
        "## Figures 2 and 3",
        "",
        PAPER["fig2"],
        "",
        "![Figure 2](figure2.png)",
        "",
        "Figure 3 (ours next to the paper's):",
        "",
      ]
      + figure3_markdown(fig3)
      + ["", "As CSV: [figure3.csv](figure3.csv).", ""]
    )
    extra = [p.name for p in fig3.points if p.name not in used]
    if extra:
      out += [
        "Not in the table (a variant's first point in sweep order is used): "
        + ", ".join(f"`{n}`" for n in extra)
        + ".",
        "",
      ]
  if lines:
    out += (
      [
        "## Learning-rate sensitivity",
        "",
        "![lr sensitivity](lr_sensitivity.png)",
        "",
        "Final eval accuracy of finished points, mean ± std over seeds; diverged points "
        "(NaN/Inf or a loss above `max_loss`) have no final accuracy and are counted.",
        "",
      ]
      + lr_markdown(lines)
      + [""]
    )
  out += ["## Results", ""]
  if seeds:
    out += ["Over seeds:", ""] + aggregate_markdown(res, groups, target) + [""]
  out += ["Per point: [results.md](results.md), [results.csv](results.csv).", ""]
  failed = [p for p in res.points if p.status == "failed"]
  if failed:
    out += ["Failed points:", ""] + [f"- `{p.name}`: {p.error}" for p in failed] + [""]

  out += (
    [
      "## Commands",
      "",
      f"In `{res.record.get('cwd', '?')}`:",
      "",
      "```sh",
      res.record.get("runner_command", "(not recorded)"),
      report_command,
      "```",
      "",
      "<details><summary>One command per point (what the runner ran)</summary>",
      "",
      "```sh",
    ]
    + [p.command for p in res.points]
    + ["```", "", "</details>", ""]
  )
  out += ["## Software and hardware", ""] + _environment_lines(res) + [""]
  out += [
    "Files: " + ", ".join(f"[{os.path.basename(w)}]({os.path.basename(w)})" for w in written),
    "",
  ]
  return "\n".join(out)


# ---------------------------------------------------------------------------
# CLI.


_fail = functools.partial(cli.report, "sweep_report")


def write_all(
  res: SweepResults, out: str, target: float, lr_hint: float, report_command: str
) -> list[str]:
  """Writes every output into `out`; returns their paths."""
  written = []

  def path(name):
    written.append(os.path.join(out, name))
    return written[-1]

  with open(path("results.csv"), "w", newline="") as f:
    csv.writer(f).writerows(point_rows(res))
  seeds = SEED_FIELD in res.grid_fields
  groups = group_points(res, drop=(SEED_FIELD,))
  if seeds:
    with open(path("aggregate.csv"), "w", newline="") as f:
      csv.writer(f).writerows(aggregate_rows(res, groups))
  md = [f"# Results: `{res.spec}`", ""]
  if seeds:
    md += ["## Over seeds", ""] + aggregate_markdown(res, groups, target) + [""]
  md += ["## Points", ""] + points_markdown(res, target) + [""]
  with open(path("results.md"), "w") as f:
    f.write("\n".join(md))
  lines = lr_lines(res)
  if lines:
    draw_lr_sensitivity(lines, path("lr_sensitivity.png"))
  pair = figure1_pair(res, lr_hint)
  if pair is not None:
    figure1 = _figure1()
    bn, nobn = pair
    written += figure1.draw_figure(bn.run, nobn.run, out)
    with open(path("figure1.csv"), "w", newline="") as f:
      csv.writer(f).writerows(figure1.csv_rows(bn.run, nobn.run))
    with open(path("figure1.md"), "w") as f:
      f.write(figure1.make_table(bn.run, nobn.run))
  fig3 = figure3(res)
  if fig3 is not None:
    draw_figure2(fig3, path("figure2.png"))
    with open(path("figure3.csv"), "w", newline="") as f:
      csv.writer(f).writerows(figure3_rows(fig3))
    with open(path("figure3.md"), "w") as f:
      f.write(
        "\n".join(
          [
            f"# Figure 3: `{res.spec}`",
            "",
            f"Inception's best eval accuracy: {_fmt(fig3.baseline_best)}.",
            "",
          ]
          + figure3_markdown(fig3)
          + [""]
        )
      )
  report = path("REPORT.md")
  with open(report, "w") as f:
    f.write(make_report(res, target, pair, lines, seeds, groups, written, report_command, fig3))
  return written


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.sweep_dir:
    return _fail("--sweep_dir: required")
  target = FLAGS.target_accuracy
  if not 0 < target <= 1:
    return _fail(f"--target_accuracy: must be in (0, 1], got {target}")
  if not FLAGS.figure1_lr > 0:
    return _fail(f"--figure1_lr: must be > 0, got {FLAGS.figure1_lr}")
  out = FLAGS.out_dir or FLAGS.sweep_dir
  if os.path.exists(out) and not os.path.isdir(out):
    return _fail(f"--out_dir={out}: exists and is not a directory")
  try:
    res = load_sweep(FLAGS.sweep_dir, target)
  except UserError as e:
    return _fail(str(e))
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return _fail(f"--out_dir={out}: cannot create: {e}")
  written = write_all(res, out, target, FLAGS.figure1_lr, shlex.join([sys.executable] + sys.argv))
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("sweep_report"))
