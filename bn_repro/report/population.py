"""A trained run's BN population statistics re-estimated with Algorithm 2: precise BN and AdaBN.

Precise BN evaluates a checkpoint with the statistics it stores and with Algorithm 2's over
N training batches (the weights frozen); AdaBN (Li et al. 2016) re-estimates them on a
shifted domain (bn_repro/data/shift.py) and evaluates on the shifted eval set. The run is
opened with `bn_repro.runs.open_run` and never written; results go into another directory.
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bn_repro import data, runs
from bn_repro.report import plots
from bn_repro.report.tables import fmt, md_table
from bn_repro.rundir import write_json

PRECISE_RESULTS = "precise_bn.json"
SAVED_RUN = "run"  # in precise BN's output: the run with the largest N's statistics
PRECISE_HEADER = (
  "statistics",
  "batches",
  "examples",
  "eval accuracy",
  "eval loss",
  "change in accuracy",
)
ADABN_RESULTS = "adabn.json"
ADABN_FIGURE = "adabn.png"
ADABN_HEADER = (
  "shift",
  "clean accuracy",
  "shifted, source statistics",
  "shifted, AdaBN",
  "AdaBN gain",
)
BARS = (
  ("clean", "clean accuracy"),
  ("before", "shifted, source statistics"),
  ("after", "shifted, AdaBN"),
)
ACC = "eval/accuracy"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table whose floats have 4 decimals."""
  return "\n".join(md_table(header, [[fmt(v) for v in row] for row in rows]))


# ---------------------------------------------------------------------------
# Precise BN.


@dataclasses.dataclass
class PreciseBN:
  """Evaluations with the stored statistics and with Algorithm 2's over each N."""

  rows: list[dict[str, Any]]  # {"statistics", "batches", eval metrics...}, stored first
  state: Any  # the replicated state with the largest N's statistics
  batch_size: int

  def table(self) -> str:
    stored = self.rows[0][ACC]
    return table(
      PRECISE_HEADER,
      [
        (
          r["statistics"],
          r["batches"] or "—",
          r["batches"] and r["batches"] * self.batch_size or "—",
          r[ACC],
          r["eval/loss"],
          r[ACC] - stored,
        )
        for r in self.rows
      ],
    )


def saved_run_dir(out: str) -> str:
  """Where precise BN writes the run with the largest N's statistics."""
  return os.path.join(out, SAVED_RUN)


def precise_bn(run: runs.Run, batches: Sequence[int]) -> PreciseBN:
  """Evaluates `run` with its stored statistics and with Algorithm 2's over each N in
  `batches` (distinct, positive) training batches."""
  stored = run.require_population().evaluate(run.state)
  rows: list[dict[str, Any]] = [
    {"statistics": f"stored ({run.stored_statistics})", "batches": None} | stored
  ]
  largest = None
  for n in batches:
    state = run.require_population().precise_population(run.state, n)
    rows.append(
      {"statistics": "Algorithm 2", "batches": n} | run.require_population().evaluate(state)
    )
    if n == max(batches):
      largest = state
  return PreciseBN(rows, largest, run.config.batch_size)


def write_precise_bn(out: str, run: runs.Run, result: PreciseBN, unbiased: bool) -> list[str]:
  """Writes precise_bn.json and the run with the largest N's statistics into `out`;
  returns their paths."""
  source = {
    "workdir": os.path.abspath(run.workdir),
    "step": run.step,
    "batches": max(r["batches"] for r in result.rows[1:]),
    "unbiased": unbiased,
  }
  run_dir = saved_run_dir(out)
  runs.save_run(run_dir, run, result.state, source)
  path = os.path.join(out, PRECISE_RESULTS)
  write_json(
    path,
    {
      "source": source,
      "batch_size": result.batch_size,
      "rows": result.rows,
      "run": run_dir,
      "table": result.table(),
    },
  )
  return [path, run_dir]


# ---------------------------------------------------------------------------
# AdaBN.


def adabn(run: runs.Run, shifts: Sequence[data.Shift], batches: int) -> list[dict[str, Any]]:
  """Per shift: the clean eval metrics, the shifted ones with the source's statistics
  ("before") and with Algorithm 2's over `batches` shifted training batches ("after").

  Noise is drawn with seed 0 on the training images and seed 1 on the eval images.
  """
  clean = run.require_population().evaluate(run.state)
  train_ds, eval_ds = run.train_ds, run.eval_ds
  assert train_ds is not None and eval_ds is not None  # require_population refuses streamed data
  rows = []
  for shift in shifts:
    estimator = run.on_data(
      data.ArrayDataset(shift(train_ds.images, 0), train_ds.labels),
      data.ArrayDataset(shift(eval_ds.images, 1), eval_ds.labels),
    )
    try:
      adapted = estimator.precise_population(run.state, batches)
      rows.append(
        {
          "shift": shift.spec,
          "clean": clean,
          "before": estimator.evaluate(run.state),
          "after": estimator.evaluate(adapted),
        }
      )
    finally:
      estimator.close()
  return rows


def adabn_table(rows: Sequence[dict[str, Any]]) -> str:
  """Accuracy per shift: clean, shifted before and after AdaBN, and the gain."""
  acc = lambda r, key: r[key][ACC]
  return table(
    ADABN_HEADER,
    [
      (
        r["shift"],
        acc(r, "clean"),
        acc(r, "before"),
        acc(r, "after"),
        acc(r, "after") - acc(r, "before"),
      )
      for r in rows
    ],
  )


def draw_adabn(rows: Sequence[dict[str, Any]], title: str) -> Figure:
  """Grouped bars: clean, before and after accuracy per shift. Writes nothing."""
  x = np.arange(len(rows))
  width = 0.8 / len(BARS)
  fig = plots.figure(1.6 * len(rows) + 3, 4)
  ax = fig.subplots()
  for i, (key, label) in enumerate(BARS):
    bars = ax.bar(x + (i - 1) * width, [r[key][ACC] for r in rows], width, label=label)
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
  ax.set_xticks(x, [r["shift"] for r in rows])
  ax.set_ylabel("eval accuracy")
  ax.set_ylim(0, 1.2)
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_title(title, fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(loc="upper center", ncol=len(BARS), fontsize=8)
  fig.tight_layout()
  return fig


def adabn_title(run: runs.Run, batches: int) -> str:
  return (
    f"AdaBN: {run.workdir} at step {run.step}, statistics over {batches} "
    f"shifted batches of {run.config.batch_size}"
  )


def write_adabn(
  out: str, run: runs.Run, rows: Sequence[dict[str, Any]], batches: int, unbiased: bool
) -> list[str]:
  """Writes adabn.json and adabn.png into `out` (created if needed); returns their paths."""
  os.makedirs(out, exist_ok=True)
  figure = plots.save(draw_adabn(rows, adabn_title(run, batches)), os.path.join(out, ADABN_FIGURE))
  path = os.path.join(out, ADABN_RESULTS)
  write_json(
    path,
    {
      "source": {"workdir": os.path.abspath(run.workdir), "step": run.step},
      "batches": batches,
      "unbiased": unbiased,
      "batch_size": run.config.batch_size,
      "rows": list(rows),
      "table": adabn_table(rows),
    },
  )
  return [path, figure]
