"""Results of a sweep directory: tables, figures and REPORT.md (paper vs. ours).

Usage:
  python scripts/sweep_report.py --sweep_dir=runs/lr [--out_dir=DIR] \
      [--target_accuracy=0.95] [--figure1_lr=0.5]

Reads the sweep's record (written by `python -m bn_repro.sweeps`) and each point's run
directory, and writes into --out_dir (default: the sweep dir) what bn_repro.report.report
writes: results.csv, results.md, aggregate.csv (with a seed axis), lr_sensitivity.png
(when the learning rate varies), Figure 1 for a BN / no-BN sigmoid pair, Figures 2 and 3
for the paper's Inception variants, and REPORT.md.
Exit codes: 0 written; 2 bad input (one line on stderr, nothing written).
"""

import functools
import os
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from bn_repro import cli
from bn_repro.errors import UserError
from bn_repro.report import report, results

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep_dir", None, "Sweep directory (written by python -m bn_repro.sweeps).")
flags.DEFINE_string(
  "out_dir", None, "Where to write the tables, figures and REPORT.md (default: the sweep dir)."
)
flags.DEFINE_float("target_accuracy", 0.95, "Eval accuracy whose first step is reported.")
flags.DEFINE_float(
  "figure1_lr",
  0.5,
  "With several BN/no-BN sigmoid pairs, Figure 1 uses the "
  "smallest seed and the learning rate closest to this (log scale; 0.5 is "
  "the mnist_mlp preset).",
)

_fail = functools.partial(cli.report, "sweep_report")


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
    res = results.load_sweep(FLAGS.sweep_dir, target)
  except UserError as e:
    return _fail(str(e))
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return _fail(f"--out_dir={out}: cannot create: {e}")
  command = shlex.join([sys.executable] + sys.argv)
  written = report.write_all(res, out, target, FLAGS.figure1_lr, command)
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("sweep_report"))
