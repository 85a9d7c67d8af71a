"""Figures and tables of the ablation sweeps (bn_repro/configs/ablation_sweeps.py).

Usage (any subset of the four sweep dirs):
  python scripts/ablation_report.py --variants=runs/abl/variants --ics=runs/abl/ics \
      --weight_scale=runs/abl/weight_scale --regularization=runs/abl/regularization \
      --report_dir=runs/abl/report

Writes into --report_dir, per sweep given:
  variants.png / .md          eval accuracy vs step per BN variant (mean over seeds); table
                              of accuracy at steps 250 and 1,000, final and best accuracy
  ics.png / .md               Santurkar et al.'s ICS per layer vs step (relative gradient
                              change and cosine), BN / noisy BN / no BN; table of medians,
                              and the percentile drift of Figure 1's probe
  weight_scale.png / .md      eval accuracy vs step for initial weights scaled by a, BN
                              solid, no BN dashed
  regularization.png / .md    final eval and train-set accuracy and their gap, dropout x BN
  ABLATIONS.md                all tables, with this command
Exit codes: 0 written; 2 bad input (one line on stderr, nothing written).
"""

import dataclasses
import functools
import importlib.util
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_SCRIPTS) not in sys.path:
  sys.path.insert(0, os.path.dirname(_SCRIPTS))

from bn_repro import cli  # pylint: disable=wrong-import-position
from bn_repro.errors import UserError  # pylint: disable=wrong-import-position
from bn_repro.metrics import series
from bn_repro.rundir import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", None, "Sweep dir of ablation_sweeps:variants.")
flags.DEFINE_string("ics", None, "Sweep dir of ablation_sweeps:ics.")
flags.DEFINE_string("weight_scale", None, "Sweep dir of ablation_sweeps:weight_scale.")
flags.DEFINE_string("regularization", None, "Sweep dir of ablation_sweeps:regularization.")
flags.DEFINE_string("report_dir", None, "Output directory (created if needed).")

ACC = "eval/accuracy"
TRAIN_ACC = "train_eval/accuracy"
SEED = "seed"


def _sweep_report():
  """scripts/sweep_report.py as a module: its sweep reader and tables."""
  if "sweep_report" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
      "sweep_report", os.path.join(_SCRIPTS, "sweep_report.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_report"] = module
    spec.loader.exec_module(module)
  return sys.modules["sweep_report"]


@dataclasses.dataclass
class Setting:
  """The points of one setting (all seeds): label and each seed's metric events."""

  label: str
  fields: dict[str, Any]
  runs: list[list[dict[str, Any]]]  # per seed: metrics.jsonl events
  statuses: list[str]
  dirs: list[str]  # per seed: the point's run directory

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the mean over seeds of `key`, at steps every seed has."""
    per_seed = [dict(zip(*series(events, key))) for events in self.runs]
    per_seed = [s for s in per_seed if s]
    if not per_seed:
      return np.zeros(0), np.zeros(0)
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    return np.asarray(steps), np.asarray([np.mean([s[t] for s in per_seed]) for t in steps])

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


def load_settings(sweep_dir: str, label: Callable[[dict[str, Any]], str]) -> list[Setting]:
  """The sweep's points grouped over seeds, labelled by `label(fields)`, in sweep order."""
  sr = _sweep_report()
  res = sr.load_sweep(sweep_dir, target=1.0)
  settings = []
  for group in sr.group_points(res, drop=(SEED,)):
    dirs = [os.path.join(sweep_dir, p.name) for p in group.points]
    runs = [
      RunDir(d).metrics() if os.path.isfile(os.path.join(d, "metrics.jsonl")) else [] for d in dirs
    ]
    settings.append(
      Setting(label(group.fields), group.fields, runs, [p.status for p in group.points], dirs)
    )
  if not any(any(r) for s in settings for r in s.runs):
    raise UserError(f"{sweep_dir}: no point has metrics yet; run the sweep first")
  return settings


def _pm(mean: float, std: float) -> str:
  if math.isnan(mean):
    return "-"
  return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
    "| " + " | ".join(r) + " |" for r in rows
  ]


def _status(s: Setting) -> str:
  counts = {k: s.statuses.count(k) for k in sorted(set(s.statuses))}
  return ", ".join(f"{v} {k}" for k, v in counts.items())


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


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


def _accuracy_curves(
  settings: Sequence[Setting],
  path: str,
  title: str,
  style: Callable[[Setting], dict[str, Any]] = lambda s: {},
) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for s in settings:
    x, y = s.curve(ACC)
    ax.plot(x, y, label=s.label, **style(s))
  ax.set_xscale("symlog", linthresh=250)
  ax.set_xlabel("training step")
  ax.set_ylabel("eval accuracy (mean over seeds)")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


ACCURACY_STEPS = (250, 1000)  # early steps the accuracy tables show


def _accuracy_table(settings: Sequence[Setting]) -> list[str]:
  """Per setting: accuracy at ACCURACY_STEPS, final and best accuracy, run statuses."""
  rows = []
  for s in settings:
    best = max((max(series(e, ACC)[1], default=math.nan) for e in s.runs if e), default=math.nan)
    rows.append(
      [s.label]
      + [_pm(*s.at(ACC, t)[:2]) for t in ACCURACY_STEPS]
      + [_pm(*s.at(ACC)[:2]), _pm(best, math.nan), _status(s)]
    )
  return _table(
    ["setting"] + [f"acc @ {t}" for t in ACCURACY_STEPS] + ["final acc", "best (any seed)", "runs"],
    rows,
  )


def report_variants(sweep_dir: str, out: str) -> tuple[list[str], list[str]]:
  settings = load_settings(sweep_dir, variant_label)
  path = os.path.join(out, "variants.png")
  _accuracy_curves(settings, path, "MNIST MLP (sigmoid): BN variants")
  md = [
    "## BN variants",
    "",
    f"Sweep: `{sweep_dir}`; figure: `variants.png`.",
    "",
  ] + _accuracy_table(settings)
  return md, [path]


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


def report_ics(sweep_dir: str, out: str) -> tuple[list[str], list[str]]:
  settings = load_settings(sweep_dir, ics_label)
  layers = _ics_layers(settings)
  if not layers:
    raise UserError(f"{sweep_dir}: no ics/* metrics; was the sweep run with ics_probe=True?")
  shown = layers[1:] or layers  # the first layer has no earlier layer: its shift is 0
  plt = _plt()
  fig, axes = plt.subplots(2, len(shown), figsize=(4 * len(shown), 6.5), squeeze=False)
  for j, layer in enumerate(shown):
    for row, (stat, name) in enumerate((("rel", "||G - G'|| / ||G||"), ("cos", "cos(G, G')"))):
      ax = axes[row][j]
      for s in settings:
        ax.plot(*s.curve(f"ics/{layer}/{stat}"), label=s.label)
      ax.set_xscale("symlog", linthresh=250)
      ax.set_title(f"{layer}: {name}", fontsize=9)
      ax.grid(alpha=0.3)
      if stat == "rel":
        ax.set_yscale("log")
      if row == 1:
        ax.set_xlabel("training step")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Internal covariate shift (Santurkar et al. 2018, Def. 2.1), mean over seeds")
  fig.tight_layout()
  path = os.path.join(out, "ics.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  figure1 = _sweep_report()._figure1()  # pylint: disable=protected-access
  rows = []
  for s in settings:
    cells = [s.label]
    for layer in shown:
      rel = [np.median(series(e, f"ics/{layer}/rel")[1]) for e in s.runs if e]
      cos = [np.median(series(e, f"ics/{layer}/cos")[1]) for e in s.runs if e]
      cells.append(f"{np.mean(rel):.3f} / {np.mean(cos):.3f}")
    drifts = [
      figure1.run_drift(figure1.load_run(d))["p50"] for d, events in zip(s.dirs, s.runs) if events
    ]
    cells += [f"{np.mean(drifts):.2f}", _pm(*s.at(ACC)[:2])]
    rows.append(cells)
  md = [
    "## Internal covariate shift",
    "",
    f"Sweep: `{sweep_dir}`; figure: `ics.png`. Per layer: median over evaluations of "
    "||G − G'||/||G|| / median cos(G, G') (mean over seeds; 0 / 1 = no shift). Drift: "
    "(max − min of the probe's median) / mean(p85 − p15) over the run (Figure 1's probe).",
    "",
  ] + _table(["setting"] + [f"{l}: rel / cos" for l in shown] + ["probe drift", "final acc"], rows)
  return md, [path]


def scale_label(fields: dict[str, Any]) -> str:
  bn = "BN" if fields.get("model.use_bn") else "no BN"
  return f"{bn}, a = {fields.get('model.init_std')}"


def report_weight_scale(sweep_dir: str, out: str) -> tuple[list[str], list[str]]:
  settings = load_settings(sweep_dir, scale_label)
  path = os.path.join(out, "weight_scale.png")
  _accuracy_curves(
    settings,
    path,
    "Initial weights scaled by a: BN (solid) vs no BN (dashed)",
    style=lambda s: {"linestyle": "-" if s.fields.get("model.use_bn") else "--"},
  )
  md = [
    "## Scale of the initial weights",
    "",
    f"Sweep: `{sweep_dir}`; figure: `weight_scale.png`. Weights ~ N(0, a²/fan_in).",
    "",
  ] + _accuracy_table(settings)
  return md, [path]


def reg_label(fields: dict[str, Any]) -> str:
  bn = "BN" if fields.get("model.use_bn") else "no BN"
  return f"{bn}, dropout {fields.get('model.dropout_rate')}"


def report_regularization(sweep_dir: str, out: str) -> tuple[list[str], list[str]]:
  settings = load_settings(sweep_dir, reg_label)
  rows, test, gap = [], [], []
  for s in settings:
    t, train = s.at(ACC), s.at(TRAIN_ACC)
    gaps = []
    for events, status in zip(s.runs, s.statuses):
      a, b = series(events, ACC)[1], series(events, TRAIN_ACC)[1]
      if a and b and status == "done":
        gaps.append(b[-1] - a[-1])
    g = (
      float(np.mean(gaps)) if gaps else math.nan,
      float(np.std(gaps, ddof=1)) if len(gaps) > 1 else math.nan,
    )
    test.append(t[0])
    gap.append(g[0])
    rows.append([s.label, _pm(*train[:2]), _pm(*t[:2]), _pm(*g), _status(s)])
  plt = _plt()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
  labels = [s.label for s in settings]
  ax1.bar(labels, test, color="tab:blue")
  ax1.set_ylim(min(v for v in test if not math.isnan(v)) - 0.02, 1.0)
  ax1.set_title("final eval accuracy")
  ax2.bar(labels, gap, color="tab:orange")
  ax2.set_title("train - eval accuracy (gap)")
  for ax in (ax1, ax2):
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  path = os.path.join(out, "regularization.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  md = [
    "## Regularization",
    "",
    f"Sweep: `{sweep_dir}`; figure: `regularization.png`. Train "
    "accuracy: the training examples evaluated like the eval set (population statistics, "
    "no dropout).",
    "",
  ] + _table(["setting", "final train acc", "final eval acc", "gap", "runs"], rows)
  return md, [path]


REPORTS = {
  "variants": report_variants,
  "ics": report_ics,
  "weight_scale": report_weight_scale,
  "regularization": report_regularization,
}


_fail = functools.partial(cli.report, "ablation_report")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  given = {name: getattr(FLAGS, name) for name in REPORTS if getattr(FLAGS, name)}
  if not given:
    return _fail(f"give at least one of {', '.join('--' + n for n in REPORTS)}")
  if not FLAGS.report_dir:
    return _fail("--report_dir: required")
  for name, d in given.items():
    if not os.path.isfile(os.path.join(d, "sweep.json")):
      return _fail(
        f"--{name}={d}: not a sweep dir (no sweep.json); run "
        f"python -m bn_repro.sweep --sweep=ablation_sweeps:{name} first"
      )
  md = ["# Ablations", "", f"`{shlex.join([sys.executable] + sys.argv)}`", ""]
  try:
    os.makedirs(FLAGS.report_dir, exist_ok=True)
    # Everything is written to a scratch dir first and moved into --report_dir at the end, so
    # that bad input leaves --report_dir as it was.
    with tempfile.TemporaryDirectory(dir=FLAGS.report_dir, prefix=".ablation_report.") as scratch:
      names = []
      for name, d in given.items():
        section, files = REPORTS[name](d, scratch)
        with open(os.path.join(scratch, f"{name}.md"), "w") as f:
          f.write("\n".join(section) + "\n")
        md += section + [""]
        names += [os.path.basename(p) for p in files] + [f"{name}.md"]
      with open(os.path.join(scratch, "ABLATIONS.md"), "w") as f:
        f.write("\n".join(md))
      names.append("ABLATIONS.md")
      for n in names:
        os.replace(os.path.join(scratch, n), os.path.join(FLAGS.report_dir, n))
  except UserError as e:
    return _fail(str(e))
  except OSError as e:
    return _fail(f"--report_dir={FLAGS.report_dir}: cannot write: {e}")
  print("Wrote " + ", ".join(os.path.join(FLAGS.report_dir, n) for n in names))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("ablation_report"))
