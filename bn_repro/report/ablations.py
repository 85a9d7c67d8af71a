"""Figures and tables of the ablation sweeps (bn_repro/configs/ablation_sweeps.py).

Each of `variants`, `ics`, `weight_scale` and `regularization` reads one sweep directory and
returns a `Section`: its Markdown and its figures, nothing written. `write` writes the
sections given into a report directory:
  variants.png / .md          eval accuracy vs step per BN variant (mean over seeds); table
                              of accuracy at steps 250 and 1,000, final and best accuracy
  ics.png / .md               Santurkar et al.'s ICS per layer vs step (relative gradient
                              change and cosine), BN / noisy BN / no BN; table of medians,
                              and the percentile drift of Figure 1's probe
  weight_scale.png / .md      eval accuracy vs step for initial weights scaled by a, BN
                              solid, no BN dashed
  regularization.png / .md    final eval and train-set accuracy and their gap, dropout x BN
  ABLATIONS.md                all tables, with the command that made them
"""

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from bn_repro.errors import UserError
from bn_repro.metrics import series
from bn_repro.report import plots
from bn_repro.report.aggregate import group_points
from bn_repro.report.figure1 import run_drift
from bn_repro.report.results import ACC_KEY, SEED_FIELD, PointResult, load_sweep
from bn_repro.report.tables import md_table, pm
from bn_repro.rundir import SweepDir

TRAIN_ACC = "train_eval/accuracy"
MISSING = "-"  # an ablation table's cell without a number


@dataclasses.dataclass
class Setting:
  """The points of one setting (all seeds): its label, grid values and points."""

  label: str
  fields: dict[str, Any]
  points: list[PointResult]

  @property
  def runs(self) -> list[list[dict[str, Any]]]:
    """Per seed: the metric events."""
    return [p.events for p in self.points]

  @property
  def statuses(self) -> list[str]:
    return [p.status for p in self.points]

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the mean over seeds of `key`, at steps every seed has."""
    steps, values = self.per_seed(key)
    return steps, values.mean(0) if values.size else np.zeros(0)

  def per_seed(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps every seed has, and `key` there: [seed, step]."""
    per_seed = [dict(zip(*series(events, key))) for events in self.runs]
    per_seed = [s for s in per_seed if s]
    if not per_seed:
      return np.zeros(0), np.zeros((0, 0))
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    return np.asarray(steps), np.asarray([[s[t] for t in steps] for s in per_seed], np.float64)

  def at(self, key: str, step: int | None = None) -> tuple[float, float, int]:
    """Mean, sample std and count over seeds of `key` at `step` (None: the last value of
    each finished run)."""
    values = []
    for events, status in zip(self.runs, self.statuses):
      steps, vals = series(events, key)
      if not steps or (step is None and status != "done"):
        continue
      if step is None:
        values.append(vals[-1])
      elif step in steps:
        values.append(vals[steps.index(step)])
    a = np.asarray(values, np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else math.nan
    return (float(a.mean()) if len(a) else math.nan), std, len(a)


@dataclasses.dataclass
class Section:
  """One sweep's part of the report: Markdown lines and figures by file name."""

  markdown: list[str]
  figures: dict[str, Figure]


def section(
  heading: str, sweep_dir: str, name: str, note: str, table: Sequence[str], fig: Figure
) -> Section:
  """A section headed `heading` that shows `fig` as `name`.png and the table below `note`."""
  md = [f"## {heading}", "", f"Sweep: `{sweep_dir}`; figure: `{name}.png`.{note}", ""]
  return Section(md + list(table), {f"{name}.png": fig})


def load_settings(sweep_dir: str, label: Callable[[dict[str, Any]], str]) -> list[Setting]:
  """The sweep's points grouped over seeds, labelled by `label(fields)`, in sweep order."""
  res = load_sweep(sweep_dir, target=1.0)
  settings = [
    Setting(label(g.fields), g.fields, g.points) for g in group_points(res, drop=(SEED_FIELD,))
  ]
  if not any(any(r) for s in settings for r in s.runs):
    raise UserError(f"{sweep_dir}: no point has metrics yet; run the sweep first")
  return settings


def _pm(stats: Sequence[float]) -> str:
  return pm(stats[0], stats[1], missing=MISSING)


def _status(s: Setting) -> str:
  counts = {k: s.statuses.count(k) for k in sorted(set(s.statuses))}
  return ", ".join(f"{v} {k}" for k, v in counts.items())


def accuracy_curves(
  settings: Sequence[Setting],
  title: str,
  style: Callable[[Setting], dict[str, Any]] = lambda s: {},
) -> Figure:
  """Eval accuracy (mean over seeds) vs step, one line per setting."""
  fig = plots.figure(7, 4.5)
  ax = fig.subplots()
  for s in settings:
    x, per_seed = s.per_seed(ACC_KEY)
    if not x.size:
      continue
    (line,) = ax.plot(x, per_seed.mean(0), label=s.label, **style(s))
    if len(per_seed) > 1:
      ax.fill_between(x, per_seed.min(0), per_seed.max(0), color=line.get_color(), alpha=0.15, lw=0)
  steps_axis(ax)
  ax.set_ylabel("eval accuracy (mean over seeds; band: min–max)")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


ACCURACY_STEPS = (250, 1000)  # early steps the accuracy tables show


def accuracy_table(settings: Sequence[Setting]) -> list[str]:
  """Per setting: accuracy at ACCURACY_STEPS, final and best accuracy, run statuses."""
  rows = []
  for s in settings:
    best = max(
      (max(series(e, ACC_KEY)[1], default=math.nan) for e in s.runs if e), default=math.nan
    )
    rows.append(
      [s.label]
      + [_pm(s.at(ACC_KEY, t)) for t in ACCURACY_STEPS]
      + [_pm(s.at(ACC_KEY)), _pm((best, math.nan)), _status(s)]
    )
  return md_table(
    ["setting"] + [f"acc @ {t}" for t in ACCURACY_STEPS] + ["final acc", "best (any seed)", "runs"],
    rows,
  )


# ---------------------------------------------------------------------------
# The four sweeps.


def variant_label(fields: dict[str, Any]) -> str:
  if not fields.get("model.use_bn", True):
    return "no BN"
  if "bn.virtual_batch_size" in fields:
    return f"ghost batches of {fields['bn.virtual_batch_size']}"
  if fields.get("bn.renorm"):
    return "Batch Renorm"
  if "bn.noise_mean" in fields:
    return "noisy BN"
  if "bn.freeze_step" in fields:
    return f"frozen after {fields['bn.freeze_step']}"
  if fields.get("bn.population") == "average":
    return "Algorithm 2 statistics"
  if "model.bn_position" in fields:
    return {"after_act": "BN after g", "u": "BN of u"}.get(
      fields["model.bn_position"], fields["model.bn_position"]
    )
  return "BN (paper)"


def variants(sweep_dir: str) -> Section:
  settings = load_settings(sweep_dir, variant_label)
  fig = accuracy_curves(settings, "MNIST MLP (sigmoid): BN variants")
  return section("BN variants", sweep_dir, "variants", "", accuracy_table(settings), fig)


def ics_label(fields: dict[str, Any]) -> str:
  if not fields.get("model.use_bn", True):
    return "no BN"
  return "noisy BN" if "bn.noise_mean" in fields else "BN"


def _ics_layers(settings: Sequence[Setting]) -> list[str]:
  layers = []
  for s in settings:
    for events in s.runs:
      for e in events:
        for k in e:
          if k.startswith("ics/") and k.endswith("/rel") and k.split("/")[1] not in layers:
            layers.append(k.split("/")[1])
  return layers


def _ics_figure(settings: Sequence[Setting], shown: Sequence[str]) -> Figure:
  fig = plots.figure(4 * len(shown), 6.5)
  axes = fig.subplots(2, len(shown), squeeze=False)
  for j, layer in enumerate(shown):
    for row, (stat, name) in enumerate((("rel", "||G - G'|| / ||G||"), ("cos", "cos(G, G')"))):
      ax = axes[row][j]
      for s in settings:
        ax.plot(*s.curve(f"ics/{layer}/{stat}"), label=s.label)
      steps_axis(ax)
      ax.set_title(f"{layer}: {name}", fontsize=9)
      ax.grid(alpha=0.3)
      if stat == "rel":
        ax.set_yscale("log")
      if row == 0:
        ax.set_xlabel("")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Internal covariate shift (Santurkar et al. 2018, Def. 2.1), mean over seeds")
  fig.tight_layout()
  return fig


def ics(sweep_dir: str) -> Section:
  settings = load_settings(sweep_dir, ics_label)
  layers = _ics_layers(settings)
  if not layers:
    raise UserError(f"{sweep_dir}: no ics/* metrics; was the sweep run with ics_probe=True?")
  shown = layers[1:] or layers  # the first layer has no earlier layer: its shift is 0
  rows = []
  for s in settings:
    cells = [s.label]
    for layer in shown:
      rel = [np.median(series(e, f"ics/{layer}/rel")[1]) for e in s.runs if e]
      cos = [np.median(series(e, f"ics/{layer}/cos")[1]) for e in s.runs if e]
      cells.append(f"{np.mean(rel):.3f} / {np.mean(cos):.3f}")
    drifts = [run_drift(p.run)["p50"] for p in s.points if p.run is not None]
    cells += [f"{np.mean(drifts):.2f}", _pm(s.at(ACC_KEY))]
    rows.append(cells)
  note = (
    " Per layer: median over evaluations of "
    "||G − G'||/||G|| / median cos(G, G') (mean over seeds; 0 / 1 = no shift). Drift: "
    "(max − min of the probe's median) / mean(p85 − p15) over the run (Figure 1's probe)."
  )
  table = md_table(
    ["setting"] + [f"{l}: rel / cos" for l in shown] + ["probe drift", "final acc"], rows
  )
  fig = _ics_figure(settings, shown)
  return section("Internal covariate shift", sweep_dir, "ics", note, table, fig)


def steps_axis(ax) -> None:
  """A symlog step axis (linear to 250) with its ticks labelled as numbers: 0, 250, 1,000 ..."""
  ax.set_xscale("symlog", linthresh=250)
  lo, hi = ax.get_xlim()
  ticks = [t for t in (0, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000) if t <= hi]
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:,}" for t in ticks], fontsize=8)
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlim(max(lo, 0), hi)
  ax.set_xlabel("training step")


def scale_label(fields: dict[str, Any]) -> str:
  bn = "BN" if fields.get("model.use_bn") else "no BN"
  return f"{bn}, a = {fields.get('model.init_std')}"


def weight_scale(sweep_dir: str) -> Section:
  settings = load_settings(sweep_dir, scale_label)
  scales = sorted({s.fields.get("model.init_std") for s in settings}, key=lambda a: (a is None, a))
  fig = accuracy_curves(  # one colour per scale a: its BN and no-BN runs are a pair
    settings,
    "Initial weights scaled by a: BN (solid) vs no BN (dashed)",
    style=lambda s: {
      "linestyle": "-" if s.fields.get("model.use_bn") else "--",
      "color": f"C{scales.index(s.fields.get('model.init_std'))}",
    },
  )
  note = " Weights ~ N(0, a²/fan_in)."
  table = accuracy_table(settings)
  return section("Scale of the initial weights", sweep_dir, "weight_scale", note, table, fig)


def reg_label(fields: dict[str, Any]) -> str:
  bn = "BN" if fields.get("model.use_bn") else "no BN"
  return f"{bn}, dropout {fields.get('model.dropout_rate')}"


def _gap(s: Setting) -> tuple[float, float]:
  """Mean and sample std over finished seeds of final train minus final eval accuracy."""
  gaps = []
  for events, status in zip(s.runs, s.statuses):
    a, b = series(events, ACC_KEY)[1], series(events, TRAIN_ACC)[1]
    if a and b and status == "done":
      gaps.append(b[-1] - a[-1])
  return (
    float(np.mean(gaps)) if gaps else math.nan,
    float(np.std(gaps, ddof=1)) if len(gaps) > 1 else math.nan,
  )


def _bars(labels: Sequence[str], test: Sequence[float], gap: Sequence[float]) -> Figure:
  fig = plots.figure(9, 3.8)
  ax1, ax2 = fig.subplots(1, 2)
  ax1.bar(labels, test, color="tab:blue")
  ax1.set_ylim(min(v for v in test if not math.isnan(v)) - 0.02, 1.0)
  ax1.set_title("final eval accuracy")
  ax1.set_ylabel("accuracy (mean over seeds)")
  ax2.bar(labels, gap, color="tab:orange")
  ax2.set_title("train - eval accuracy (gap)")
  ax2.set_ylabel("gap (mean over seeds)")
  for ax in (ax1, ax2):
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  return fig


def regularization(sweep_dir: str) -> Section:
  settings = load_settings(sweep_dir, reg_label)
  rows, test, gap = [], [], []
  for s in settings:
    t, train, g = s.at(ACC_KEY), s.at(TRAIN_ACC), _gap(s)
    test.append(t[0])
    gap.append(g[0])
    rows.append([s.label, _pm(train), _pm(t), _pm(g), _status(s)])
  note = (
    " Train accuracy: the training examples evaluated like the eval set (population "
    "statistics, no dropout)."
  )
  table = md_table(["setting", "final train acc", "final eval acc", "gap", "runs"], rows)
  fig = _bars([s.label for s in settings], test, gap)
  return section("Regularization", sweep_dir, "regularization", note, table, fig)


REPORTS: dict[str, Callable[[str], Section]] = {
  "variants": variants,
  "ics": ics,
  "weight_scale": weight_scale,
  "regularization": regularization,
}


def check_sweep_dirs(given: Mapping[str, str]) -> None:
  """UserError unless every {report name: directory} is a sweep directory."""
  for name, d in given.items():
    if not SweepDir(d).has_record():
      raise UserError(
        f"--{name}={d}: not a sweep dir (no {SweepDir.RECORD}); run "
        f"python -m bn_repro.sweeps --sweep=ablation_sweeps:{name} first"
      )


def write(given: Mapping[str, str], report_dir: str, command: str) -> list[str]:
  """Writes the sections of {report name: sweep dir} and ABLATIONS.md into `report_dir`;
  returns the paths written.

  Everything is written to a scratch directory first and moved into `report_dir` at the
  end, so that bad input (a UserError) leaves `report_dir` as it was.
  """
  md = ["# Ablations", "", f"`{command}`", ""]
  os.makedirs(report_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=report_dir, prefix=".ablation_report.") as scratch:
    names = []
    for name, d in given.items():
      section = REPORTS[name](d)
      for file, fig in section.figures.items():
        plots.save(fig, os.path.join(scratch, file))
        names.append(file)
      with open(os.path.join(scratch, f"{name}.md"), "w") as f:
        f.write("\n".join(section.markdown) + "\n")
      md += section.markdown + [""]
      names.append(f"{name}.md")
    with open(os.path.join(scratch, "ABLATIONS.md"), "w") as f:
      f.write("\n".join(md))
    names.append("ABLATIONS.md")
    for n in names:
      os.replace(os.path.join(scratch, n), os.path.join(report_dir, n))
  return [os.path.join(report_dir, n) for n in names]
