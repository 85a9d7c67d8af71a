"""Paper Figure 1: MNIST MLP trained with and without batch normalization.

(a) test accuracy vs training step for both nets; (b) without BN and (c) with
BN: the 15th, 50th and 85th percentiles over the eval set of the input to one
typical sigmoid of the last hidden layer, vs training step.

Usage:
  python scripts/figure1.py --bn=RUN_DIR --nobn=RUN_DIR --out=OUT_DIR \
      [--max_step=N]

Writes into OUT_DIR: figure1.png (panels a, b, c), figure1a.png, figure1b.png,
figure1c.png, figure1.csv (every eval step of either run) and figure1.md
(accuracy table and per-net summary, which is also printed).
"""

import csv
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

# Make `bn_repro` importable when run as `python scripts/figure1.py`.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

from bn_repro import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from bn_repro.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from bn_repro.metrics import series  # pylint: disable=g-import-not-at-top,wrong-import-position
from bn_repro.rundir import RunDir  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("bn", None, "Run dir of the net trained with BN.")
flags.DEFINE_string("nobn", None, "Run dir of the net trained without BN.")
flags.DEFINE_string("out", None, "Output dir (created if needed).")
flags.DEFINE_integer("max_step", None, "Only use events with step <= max_step.")

ACC_KEY = "eval/accuracy"
PROBE_KEYS = {"p15": "probe/p15", "p50": "probe/p50", "p85": "probe/p85"}
EVAL_KEYS = (ACC_KEY,) + tuple(PROBE_KEYS.values())
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


@dataclasses.dataclass
class Run:
  """Eval series of one run dir (values keyed by step)."""

  path: str
  steps: list[int]
  accuracy: dict[int, float]
  p15: dict[int, float]
  p50: dict[int, float]
  p85: dict[int, float]
  use_bn: bool | None = None
  nonlinearity: str | None = None
  probe_unit: Any = None

  def percentile(self, name: str) -> dict[int, float]:
    return {"p15": self.p15, "p50": self.p50, "p85": self.p85}[name]


def _config_get(config: dict[str, Any], dotted: str) -> Any:
  """`config["a"]["b"]` for "a.b", or a flat `config["a.b"]`; None if absent."""
  if dotted in config:
    return config[dotted]
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _to_float(value: Any, key: str, path: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"{key}={value!r} in {path} is not a number")
  return float(value)


def load_run(run_dir: str, max_step: int | None = None) -> Run:
  """Reads the eval events (step <= max_step) and optional config of a run dir.

  Raises:
    UserError: the dir or its metrics file is missing or unreadable, or it has
      no eval events (with step <= max_step).
  """
  if not os.path.isdir(run_dir):
    raise UserError(f"run dir {run_dir} does not exist")
  metrics_path = RunDir(run_dir).metrics_path
  if not os.path.isfile(metrics_path):
    raise UserError(f"{metrics_path} does not exist")
  try:
    events = RunDir(run_dir).metrics()
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {metrics_path}: {e}") from e
  for e in events:
    if not isinstance(e, dict) or not isinstance(e.get("step"), int):
      raise UserError(f"{metrics_path} has an event without an integer step")
  events = [e for e in events if max_step is None or e["step"] <= max_step]
  evals = [e for e in events if any(k in e for k in EVAL_KEYS)]
  if not evals:
    where = f" with step <= {max_step}" if max_step is not None else ""
    raise UserError(f"no eval events{where} in {metrics_path}")

  def by_step(key: str) -> dict[int, float]:
    steps, values = series(evals, key)
    # A later event at the same step wins.
    return {s: _to_float(v, key, metrics_path) for s, v in zip(steps, values)}

  run = Run(
    path=run_dir,
    steps=sorted({e["step"] for e in evals}),
    accuracy=by_step(ACC_KEY),
    p15=by_step(PROBE_KEYS["p15"]),
    p50=by_step(PROBE_KEYS["p50"]),
    p85=by_step(PROBE_KEYS["p85"]),
  )
  config_path = os.path.join(run_dir, "config.json")
  if os.path.isfile(config_path):
    try:
      with open(config_path) as f:
        config = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read {config_path}: {e}") from e
    if isinstance(config, dict):
      use_bn = _config_get(config, "model.use_bn")
      run.use_bn = None if use_bn is None else bool(use_bn)
      run.nonlinearity = _config_get(config, "model.nonlinearity")
      run.probe_unit = _config_get(config, "model.probe_unit")
  return run


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


def _fmt(value: float | None, spec: str) -> str:
  if value is None:
    return "—"
  if not math.isfinite(value):
    return str(value)
  return format(value, spec)


def _label(run: Run, use_bn: bool) -> str:
  name = "with BN" if use_bn else "without BN"
  return f"{name} ({run.nonlinearity})" if run.nonlinearity else name


def summarize(run: Run) -> dict[str, Any]:
  """Final and best accuracy (with steps) and percentile drift of a run."""
  acc_steps = sorted(run.accuracy)
  final_step = acc_steps[-1] if acc_steps else None
  finite = [s for s in acc_steps if math.isfinite(run.accuracy[s])]
  best_step = max(finite, key=lambda s: (run.accuracy[s], -s)) if finite else None
  return {
    "final_step": final_step,
    "final_accuracy": run.accuracy[final_step] if acc_steps else None,
    "best_step": best_step,
    "best_accuracy": run.accuracy[best_step] if finite else None,
    "drift": run_drift(run),
  }


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
      f"| {_label(run, use_bn)} | {_fmt(s['final_accuracy'], '.4f')} "
      f"| {_fmt(s['final_step'], 'd')} | {_fmt(s['best_accuracy'], '.4f')} "
      f"| {_fmt(s['best_step'], 'd')} | {_fmt(d['p15'], '.3f')} "
      f"| {_fmt(d['p50'], '.3f')} | {_fmt(d['p85'], '.3f')} |"
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
    f"| step | {_label(bn, True)} | {_label(nobn, False)} |",
    "|---:|---:|---:|",
  ]
  for s in steps:
    lines.append(
      f"| {s} | {_fmt(bn.accuracy.get(s), '.4f')} | {_fmt(nobn.accuracy.get(s), '.4f')} |"
    )
  lines += ["", "## Summary", "", summary_table(bn, nobn)]
  return "\n".join(lines)


def csv_rows(bn: Run, nobn: Run) -> list[list[str]]:
  """Header and one row per eval step of either run ("" where no value)."""

  def cell(values: dict[int, float], step: int) -> str:
    return repr(values[step]) if step in values else ""

  rows = [list(CSV_COLUMNS)]
  for s in sorted(set(bn.steps) | set(nobn.steps)):
    rows.append(
      [
        str(s),
        cell(bn.accuracy, s),
        cell(nobn.accuracy, s),
        cell(bn.p15, s),
        cell(bn.p50, s),
        cell(bn.p85, s),
        cell(nobn.p15, s),
        cell(nobn.p50, s),
        cell(nobn.p85, s),
      ]
    )
  return rows


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


def _draw_accuracy(ax, bn: Run, nobn: Run) -> None:
  for run, use_bn, style in ((bn, True, "-"), (nobn, False, "--")):
    ax.plot(
      *_xy(run.accuracy), style, color="black" if use_bn else "gray", label=_label(run, use_bn)
    )
  ax.set_title("(a) Test accuracy")
  ax.set_xlabel("training step")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")


def _draw_percentiles(
  ax, run: Run, use_bn: bool, panel: str, ylim: tuple[float, float] | None
) -> None:
  styles = {"p15": ("C0", ":"), "p50": ("C3", "-"), "p85": ("C0", "--")}
  for name in ("p85", "p50", "p15"):
    color, style = styles[name]
    ax.plot(*_xy(run.percentile(name)), style, color=color, label=f"{name[1:]}th percentile")
  ax.set_title(
    f"({panel}) {'With' if use_bn else 'Without'} BN: "
    f"input to {_unit_name(run)}, last hidden layer",
    fontsize=10,
  )
  ax.set_xlabel("training step")
  ax.set_ylabel(f"{run.nonlinearity or 'sigmoid'} input")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)


def draw_figure(bn: Run, nobn: Run, out_dir: str) -> list[str]:
  """Writes figure1.png (a|b|c) and figure1{a,b,c}.png; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ylim = _percentile_ylim(bn, nobn)
  panels = {
    "a": lambda ax: _draw_accuracy(ax, bn, nobn),
    "b": lambda ax: _draw_percentiles(ax, nobn, False, "b", ylim),
    "c": lambda ax: _draw_percentiles(ax, bn, True, "c", ylim),
  }
  paths = []
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for ax, draw in zip(axes, panels.values()):
    draw(ax)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "figure1.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  for name, draw in panels.items():
    fig, ax = plt.subplots(figsize=(6, 4.5))
    draw(ax)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"figure1{name}.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths


_fail = functools.partial(cli.report, "figure1")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("bn", "nobn", "out"):
    if not FLAGS[name].value:
      return _fail(f"--{name}: required")
  runs = {}
  for name in ("bn", "nobn"):
    try:
      runs[name] = load_run(FLAGS[name].value, FLAGS.max_step)
    except UserError as e:
      return _fail(f"--{name}={FLAGS[name].value}: {e}")
  out = FLAGS.out
  if os.path.exists(out) and not os.path.isdir(out):
    return _fail(f"--out={out}: exists and is not a directory")
  bn, nobn = runs["bn"], runs["nobn"]
  for run, name, want in ((bn, "bn", True), (nobn, "nobn", False)):
    if run.use_bn is not None and run.use_bn != want:
      print(
        f"warning: --{name}={run.path} has model.use_bn={run.use_bn} in config.json",
        file=sys.stderr,
      )
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return _fail(f"--out={out}: cannot create: {e}")

  written = draw_figure(bn, nobn, out)
  csv_path = os.path.join(out, "figure1.csv")
  with open(csv_path, "w", newline="") as f:
    csv.writer(f).writerows(csv_rows(bn, nobn))
  md_path = os.path.join(out, "figure1.md")
  with open(md_path, "w") as f:
    f.write(make_table(bn, nobn))
  written += [csv_path, md_path]

  print(summary_table(bn, nobn))
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("figure1"))
