"""Paper Figure 1: MNIST MLP trained with and without batch normalization.

(a) test accuracy vs training step for both nets; (b) without BN and (c) with BN: the
15th, 50th and 85th percentiles over the eval set of the input to one typical sigmoid of
the last hidden layer, vs training step. Also the drift of those percentiles, the table
and CSV of every eval step, and, in a sweep, the BN / no-BN pair to draw.

`draw` and `draw_panel` return figures and write nothing; `write` writes figure1.png,
figure1a.png, figure1b.png, figure1c.png, figure1.csv and figure1.md.
"""

import csv
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from bn_repro import fields
from bn_repro.report import plots, seeds
from bn_repro.report.results import (
  BN_FIELD,
  LR_FIELD,
  NONLINEARITY_FIELD,
  PROBE_KEYS,
  SEED_FIELD,
  PointResult,
  Run,
  SweepResults,
  accuracy_summary,
)
from bn_repro.report.tables import fmt

CSV_COLUMNS = (
  "step",
  "bn_accuracy",
  "nobn_accuracy",
  "bn_p15",
  "bn_p50",
  "bn_p85",
  "nobn_p15",
  "nobn_p50",
  "nobn_p85",
)
DRIFT_DEFINITION = (
  "Drift of a percentile = (max − min of that percentile over the eval "
  "steps) / (mean over the eval steps of p85 − p15), using the steps where "
  "all three percentiles are finite: how far it moves during training in "
  "units of the distribution's own width (small = the distribution stays "
  "put)."
)
PANELS = ("a", "b", "c")


def drift(p15: Sequence[float], p50: Sequence[float], p85: Sequence[float]) -> dict[str, float]:
  """(max − min) of each percentile / mean(p85 − p15), over aligned steps.

  Only steps where all three values are finite count. NaN if there are none or
  the mean width is not positive.
  """
  a = np.array([p15, p50, p85], dtype=np.float64).reshape(3, -1)
  a = a[:, np.isfinite(a).all(axis=0)]
  out = {name: math.nan for name in PROBE_KEYS}
  if a.shape[1] == 0:
    return out
  width = float(np.mean(a[2] - a[0]))
  if not width > 0:
    return out
  for name, row in zip(PROBE_KEYS, a):
    out[name] = float(row.max() - row.min()) / width
  return out


def run_drift(run: Run) -> dict[str, float]:
  """`drift` of a run's probe percentiles over its eval steps."""
  steps = [s for s in run.steps if all(s in run.percentile(n) for n in PROBE_KEYS)]
  return drift(*[[run.percentile(n)[s] for s in steps] for n in PROBE_KEYS])


def select_steps(steps: Iterable[int], max_all: int = 25, target: int = 20) -> list[int]:
  """All steps if <= max_all, else ~target log-spaced ones incl. first/last."""
  steps = sorted(set(steps))
  if len(steps) <= max_all:
    return steps
  # Offsets from the first step in units of the first eval interval, so that a
  # step-0 eval does not leave a huge gap between log(1) and the next one.
  off = (np.asarray(steps, dtype=np.float64) - steps[0]) / (steps[1] - steps[0])
  log_off = np.log(off + 1.0)
  picked: set[int] = set()
  for k in range(target, 8 * len(steps) + 1):
    targets = np.linspace(0.0, log_off[-1], k)
    hi = np.clip(np.searchsorted(log_off, targets), 1, len(steps) - 1)
    lo = hi - 1
    nearest = np.where(targets - log_off[lo] <= log_off[hi] - targets, lo, hi)
    picked = set(nearest.tolist()) | {0, len(steps) - 1}
    if len(picked) >= target:
      break
  return [steps[i] for i in sorted(picked)]


def label(run: Run, use_bn: bool) -> str:
  """ "with BN (sigmoid)" / "without BN" (the nonlinearity when the config names it)."""
  name = "with BN" if use_bn else "without BN"
  return f"{name} ({run.nonlinearity})" if run.nonlinearity else name


def summarize(run: Run) -> dict[str, Any]:
  """Final and best accuracy (with steps) and percentile drift of a run."""
  return accuracy_summary(run) | {"drift": run_drift(run)}


def summary_table(bn: Run, nobn: Run) -> str:
  """Markdown summary table (one row per net) plus the drift definition."""
  lines = [
    "| net | final accuracy | at step | best accuracy | at step "
    "| drift p15 | drift p50 | drift p85 |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for run, use_bn in ((bn, True), (nobn, False)):
    s = summarize(run)
    d = s["drift"]
    lines.append(
      f"| {label(run, use_bn)} | {fmt(s['final_accuracy'], '.4f')} "
      f"| {fmt(s['final_step'], 'd')} | {fmt(s['best_accuracy'], '.4f')} "
      f"| {fmt(s['best_step'], 'd')} | {fmt(d['p15'], '.3f')} "
      f"| {fmt(d['p50'], '.3f')} | {fmt(d['p85'], '.3f')} |"
    )
  return "\n".join(lines) + "\n\n" + DRIFT_DEFINITION + "\n"


def make_table(bn: Run, nobn: Run) -> str:
  """The figure1.md text: accuracy at a subset of steps, then the summary."""
  steps = select_steps(set(bn.accuracy) | set(nobn.accuracy))
  lines = [
    "# Figure 1: MNIST MLP with and without batch normalization",
    "",
    f"Runs: with BN `{bn.path}`, without BN `{nobn.path}`.",
    "",
    "## Test accuracy",
    "",
    f"| step | {label(bn, True)} | {label(nobn, False)} |",
    "|---:|---:|---:|",
  ]
  for s in steps:
    lines.append(f"| {s} | {fmt(bn.accuracy.get(s), '.4f')} | {fmt(nobn.accuracy.get(s), '.4f')} |")
  lines += ["", "## Summary", "", summary_table(bn, nobn)]
  return "\n".join(lines)


def csv_rows(bn: Run, nobn: Run) -> list[list[str]]:
  """Header and one row per eval step of either run ("" where no value)."""

  def cell(values: dict[int, float], step: int) -> str:
    return repr(values[step]) if step in values else ""

  rows = [list(CSV_COLUMNS)]
  for s in sorted(set(bn.steps) | set(nobn.steps)):
    rows.append(
      [str(s), cell(bn.accuracy, s), cell(nobn.accuracy, s)]
      + [cell(run.percentile(n), s) for run in (bn, nobn) for n in PROBE_KEYS]
    )
  return rows


# ---------------------------------------------------------------------------
# Drawing.

COLORS = {True: "tab:blue", False: "tab:orange"}  # BN / no BN, in every panel


def _xy(values: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
  """Sorted steps and values, non-finite values as NaN (gaps in the line)."""
  steps = sorted(values)
  y = np.array([values[s] for s in steps], dtype=np.float64)
  y[~np.isfinite(y)] = np.nan
  return np.array(steps), y


def _percentile_ylim(*runs: Run) -> tuple[float, float] | None:
  vals = [v for r in runs for n in PROBE_KEYS for v in r.percentile(n).values() if math.isfinite(v)]
  if not vals:
    return None
  lo, hi = min(vals), max(vals)
  pad = 0.05 * (hi - lo) if hi > lo else 0.5
  return lo - pad, hi + pad


def _unit_name(run: Run) -> str:
  unit = run.nonlinearity or "sigmoid"
  if run.probe_unit is not None:
    return f"{unit} #{run.probe_unit}"
  return unit


def _steps_axis(ax) -> None:
  """x: training steps, ticks at round numbers (0, 2,500, 5,000 or 0, 10k, 20k ...)."""
  ax.set_xlabel("training step")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(6, steps=[1, 2, 2.5, 5, 10], integer=True))
  ax.xaxis.set_major_formatter(
    ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 10_000 else f"{x:,.0f}")
  )
  ax.grid(alpha=0.3)


def _draw_accuracy(ax, bn: Sequence[Run], nobn: Sequence[Run]) -> None:
  for runs, use_bn, style in ((bn, True, "-"), (nobn, False, "--")):
    color = COLORS[use_bn]
    if len(runs) == 1:
      ax.plot(*_xy(runs[0].accuracy), style, color=color, label=label(runs[0], use_bn))
      continue
    steps, mean, lo, hi = seeds.accuracy_band(runs)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.25, lw=0)
    ax.plot(
      steps,
      mean,
      style,
      color=color,
      label=f"{label(runs[0], use_bn)}: mean of {len(runs)} seeds, band min–max",
    )
  ax.set_title("(a) Test accuracy")
  ax.set_ylabel("test accuracy")
  ax.yaxis.set_major_locator(ticker.MaxNLocator(6))
  _steps_axis(ax)
  ax.legend(loc="lower right", fontsize=8)


def _network(run: Run) -> str:
  if run.probe_network == "train":
    return "training network (batch statistics)"
  return "inference network (population statistics)" if run.use_bn else "inference network"


def _draw_percentiles(
  ax, run: Run, use_bn: bool, panel: str, ylim: tuple[float, float] | None
) -> None:
  color = COLORS[use_bn]
  styles = {"p15": ":", "p50": "-", "p85": "--"}
  for name in ("p85", "p50", "p15"):
    ax.plot(*_xy(run.percentile(name)), styles[name], color=color, label=f"{name[1:]}th percentile")
  seed = "" if run.seed is None else f", seed {run.seed}"
  ax.set_title(
    f"({panel}) {'With' if use_bn else 'Without'} BN: input to {_unit_name(run)}\n"
    f"last hidden layer, {_network(run)}{seed}",
    fontsize=9,
  )
  ax.set_ylabel(f"{run.nonlinearity or 'sigmoid'} input")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.yaxis.set_major_locator(ticker.MaxNLocator(6))
  _steps_axis(ax)
  ax.legend(loc="best", fontsize=8)


def _draw_panel(ax, bn: Sequence[Run], nobn: Sequence[Run], panel: str) -> None:
  """Panel a, b (no BN) or c (BN) into `ax`; b and c: the first seed of each net, on the
  y range of both."""
  if panel == "a":
    _draw_accuracy(ax, bn, nobn)
  elif panel in ("b", "c"):
    use_bn = panel == "c"
    run = bn[0] if use_bn else nobn[0]
    _draw_percentiles(ax, run, use_bn, panel, _percentile_ylim(bn[0], nobn[0]))
  else:
    raise ValueError(f"Figure 1 has panels {', '.join(PANELS)}, not {panel!r}")


Runs = Run | Sequence[Run]  # one run, or one per seed


def _seeds(runs: Runs) -> list[Run]:
  return [runs] if isinstance(runs, Run) else list(runs)


def draw(bn: Runs, nobn: Runs) -> Figure:
  """Figure 1, panels a | b | c side by side; writes nothing."""
  fig = plots.figure(16, 4.8)
  for ax, panel in zip(fig.subplots(1, len(PANELS)), PANELS):
    _draw_panel(ax, _seeds(bn), _seeds(nobn), panel)
  fig.tight_layout()
  return fig


def draw_panel(bn: Runs, nobn: Runs, panel: str) -> Figure:
  """One panel of Figure 1 ("a", "b" or "c") on its own; writes nothing."""
  fig = plots.figure(6, 4.8)
  _draw_panel(fig.subplots(), _seeds(bn), _seeds(nobn), panel)
  fig.tight_layout()
  return fig


def seeds_markdown(bn: Runs, nobn: Runs) -> list[str]:
  """Per seed and over seeds, both nets; then Figure 1's targets."""
  bn, nobn = _seeds(bn), _seeds(nobn)
  out = ["## Seeds", ""]
  for runs, use_bn in ((bn, True), (nobn, False)):
    out += seeds.seeds_table(f"seed ({label(runs[0], use_bn)})", runs) + [""]
  out += [
    f"Band: p85 − p15 of the probe; its first value is at the first eval after step 0, the "
    f"ratios over the evals in (0, {seeds.BAND_STEPS:,}].",
    "",
    "## Targets",
    "",
  ]
  return out + seeds.targets_markdown(bn, nobn) + [""]


def write(bn: Runs, nobn: Runs, out_dir: str) -> list[str]:
  """Writes figure1.png (a|b|c), figure1{a,b,c}.png, figure1.csv and figure1.md into
  `out_dir` (which exists); returns their paths in that order. The CSV and the first
  tables are the first seed's; figure1.md adds every seed and the targets."""
  path = lambda name: os.path.join(out_dir, name)
  written = [plots.save(draw(bn, nobn), path("figure1.png"))]
  for panel in PANELS:
    written.append(plots.save(draw_panel(bn, nobn, panel), path(f"figure1{panel}.png")))
  first_bn, first_nobn = _seeds(bn)[0], _seeds(nobn)[0]
  written.append(path("figure1.csv"))
  with open(written[-1], "w", newline="") as f:
    csv.writer(f).writerows(csv_rows(first_bn, first_nobn))
  written.append(path("figure1.md"))
  with open(written[-1], "w") as f:
    f.write(make_table(first_bn, first_nobn) + "\n" + "\n".join(seeds_markdown(bn, nobn)))
  return written


# ---------------------------------------------------------------------------
# Figure 1 in a sweep.


def pair(res: SweepResults, lr_hint: float) -> tuple[PointResult, PointResult] | None:
  """A BN and a no-BN sigmoid point whose configs differ only in model.use_bn.

  With several such pairs: both done first, then the smallest seed, then the learning
  rate closest to `lr_hint` on a log scale, then sweep order. Fields only one config has
  (added to the config later) do not count as a difference.
  """
  sigmoid = [
    p
    for p in res.points
    if p.run is not None and p.config and p.value(NONLINEARITY_FIELD) == "sigmoid"
  ]
  pairs = [
    (bn, nobn)
    for bn in sigmoid
    if fields.get(bn.config, BN_FIELD, None) is True
    for nobn in sigmoid
    if fields.get(nobn.config, BN_FIELD, None) is False
    and fields.differ(bn.config, nobn.config) == [BN_FIELD]
  ]
  if not pairs:
    return None

  def rank(candidate):
    bn, _ = candidate
    lr = bn.value(LR_FIELD) or lr_hint
    seed = bn.value(SEED_FIELD) or 0
    both_done = all(p.status == "done" for p in candidate)
    return (
      not both_done,
      seed,
      abs(math.log(lr / lr_hint)) if lr > 0 else math.inf,
      res.points.index(bn),
    )

  return min(pairs, key=rank)


def claims(bn: PointResult, nobn: PointResult) -> tuple[str, str]:
  """Ours for Figure 1(a) (accuracy) and 1(b, c) (drift) of a sweep's BN / no-BN pair."""
  bn_run, nobn_run = bn.run, nobn.run
  assert bn_run is not None and nobn_run is not None  # pair() pairs only points with a run
  steps = [s for s in sorted(set(bn_run.accuracy) & set(nobn_run.accuracy)) if s > 0]
  ahead = sum(bn_run.accuracy[s] > nobn_run.accuracy[s] for s in steps)
  sb, sn = summarize(bn_run), summarize(nobn_run)
  acc = (
    f"BN ahead at {ahead} of {len(steps)} common eval steps after step 0; last eval "
    f"(step {fmt(sb['final_step'])} / {fmt(sn['final_step'])}): "
    f"{fmt(sb['final_accuracy'])} with BN vs {fmt(sn['final_accuracy'])} without"
  )
  db, dn = sb["drift"], sn["drift"]
  drift_text = (
    "drift (range / mean 15–85 width) of p15, p50, p85: with BN "
    + ", ".join(fmt(db[n], ".2f") for n in PROBE_KEYS)
    + "; without "
    + ", ".join(fmt(dn[n], ".2f") for n in PROBE_KEYS)
  )
  return acc, drift_text
