"""AdaBN (Li et al. 2016): a trained run's BN statistics re-estimated on a shifted domain.

Usage:
  python scripts/adabn.py --workdir=RUN [--shifts=invert,rotate:30,rotate:60,noise:0.3] \
      [--batches=100] [--unbiased] [--out=DIR] [--step=N] [--fallback_checkpoint] \
      [--override=data.idx_dir=DIR ...]

For each shift (bn_repro/data/shift.py: none, invert, rotate:<degrees>,
noise:<std in [0, 1]>) it evaluates the checkpoint on the clean eval set, on the
shifted eval set with the source's stored statistics (before), and on the shifted
eval set after Algorithm 2 re-estimated every BN layer's statistics over --batches
batches of the shifted training images (labels unused; the weights are not touched).
Noise is drawn with seed 0 on the training images and seed 1 on the eval images.
Prints a table and writes into DIR (default: RUN_adabn) adabn.json and adabn.png (a
bar chart). The source run is never written. Exit codes: 0 done; 2 bad input (one
line on stderr, nothing written).
"""

import os
import sys

# Make `bn_repro` importable when run as `python scripts/adabn.py`.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

import numpy as np  # pylint: disable=wrong-import-position

from bn_repro import (
  data,  # pylint: disable=wrong-import-position
  runs,  # pylint: disable=wrong-import-position
)
from bn_repro.errors import UserError  # pylint: disable=wrong-import-position
from bn_repro.rundir import write_json

RESULTS_FILE = "adabn.json"
FIGURE_FILE = "adabn.png"
HEADER = ("shift", "clean accuracy", "shifted, source statistics", "shifted, AdaBN", "AdaBN gain")
BARS = (
  ("clean", "clean accuracy"),
  ("before", "shifted, source statistics"),
  ("after", "shifted, AdaBN"),
)


def draw(rows, path: str, title: str) -> None:
  """Grouped bars: clean, before and after accuracy per shift."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x = np.arange(len(rows))
  width = 0.8 / len(BARS)
  fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 3, 4))
  for i, (key, label) in enumerate(BARS):
    bars = ax.bar(x + (i - 1) * width, [r[key]["eval/accuracy"] for r in rows], width, label=label)
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
  ax.set_xticks(x, [r["shift"] for r in rows])
  ax.set_ylabel("eval accuracy")
  ax.set_ylim(0, 1.2)
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_title(title, fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(loc="upper center", ncol=len(BARS), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _adabn(argv) -> None:
  parser = runs.argument_parser(__doc__.splitlines()[0])
  parser.add_argument(
    "--shifts",
    default="invert,rotate:30,rotate:60,noise:0.3",
    help=f"comma-separated shifts: {data.shift.SYNTAX}",
  )
  parser.add_argument(
    "--batches",
    type=int,
    default=100,
    help="training batches Algorithm 2 averages on each shifted domain",
  )
  args = parser.parse_args(argv)
  shifts = [data.parse_shift(s) for s in args.shifts.split(",")]
  if args.batches < 1:
    raise UserError(f"must be a positive number of batches, got {args.batches}", field="--batches")
  out = runs.output_dir(args.out, args.workdir, "adabn")
  run = runs.open_from_args(args)

  clean = run.require_population().evaluate(run.state)
  rows = []
  for shift in shifts:
    estimator = run.on_data(
      data.ArrayDataset(shift(run.train_ds.images, 0), run.train_ds.labels),
      data.ArrayDataset(shift(run.eval_ds.images, 1), run.eval_ds.labels),
    )
    adapted = estimator.precise_population(run.state, args.batches)
    rows.append(
      {
        "shift": shift.spec,
        "clean": clean,
        "before": estimator.evaluate(run.state),
        "after": estimator.evaluate(adapted),
      }
    )
    estimator.close()
  acc = lambda r, key: r[key]["eval/accuracy"]
  table = runs.markdown_table(
    HEADER,
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
  title = (
    f"AdaBN: {args.workdir} at step {run.step}, statistics over {args.batches} "
    f"shifted batches of {run.config.batch_size}"
  )
  print(f"{title}:\n\n{table}")

  os.makedirs(out, exist_ok=True)
  draw(rows, os.path.join(out, FIGURE_FILE), title)
  write_json(
    os.path.join(out, RESULTS_FILE),
    {
      "source": {"workdir": os.path.abspath(args.workdir), "step": run.step},
      "batches": args.batches,
      "unbiased": args.unbiased,
      "batch_size": run.config.batch_size,
      "rows": rows,
      "table": table,
    },
  )
  print(f"\nWrote {os.path.join(out, RESULTS_FILE)} and {os.path.join(out, FIGURE_FILE)}")


def main(argv=None) -> int:
  return runs.run_script("adabn", lambda: _adabn(argv))


if __name__ == "__main__":
  sys.exit(main())
