"""Paper Figure 1: MNIST MLP trained with and without batch normalization.

(a) test accuracy vs training step for both nets; (b) without BN and (c) with
BN: the 15th, 50th and 85th percentiles over the eval set of the input to one
typical sigmoid of the last hidden layer, vs training step.

Usage:
  python scripts/figure1.py --bn=RUN_DIR --nobn=RUN_DIR --out=OUT_DIR \
      [--max_step=N]

Writes into OUT_DIR: figure1.png (panels a, b, c), figure1a.png, figure1b.png,
figure1c.png, figure1.csv (every eval step of either run) and figure1.md
(accuracy table and per-net summary, which is also printed). The figures and
tables are bn_repro.report.figure1's. Exit codes: 0 written; 2 bad input (one
line on stderr, nothing written).
"""

import functools
import os
import sys
from collections.abc import Sequence

from absl import app, flags

from bn_repro import cli
from bn_repro.errors import UserError
from bn_repro.report import figure1, results

FLAGS = flags.FLAGS
flags.DEFINE_string("bn", None, "Run dir of the net trained with BN.")
flags.DEFINE_string("nobn", None, "Run dir of the net trained without BN.")
flags.DEFINE_string("out", None, "Output dir (created if needed).")
flags.DEFINE_integer("max_step", None, "Only use events with step <= max_step.")

_fail = functools.partial(cli.report, "figure1")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("bn", "nobn", "out"):
    if not FLAGS[name].value:
      return _fail(f"--{name}: required")
  runs = {}
  for name in ("bn", "nobn"):
    run_dir = FLAGS[name].value
    assert run_dir  # required, checked above
    try:
      runs[name] = results.load_run(run_dir, FLAGS.max_step)
    except UserError as e:
      return _fail(f"--{name}={FLAGS[name].value}: {e}")
  out = FLAGS.out
  if os.path.exists(out) and not os.path.isdir(out):
    return _fail(f"--out={out}: exists and is not a directory")
  bn, nobn = runs["bn"], runs["nobn"]
  for run, name, want in ((bn, "bn", True), (nobn, "nobn", False)):
    if run.use_bn is not None and run.use_bn != want:
      print(
        f"warning: --{name}={run.path} has model.use_bn={run.use_bn} in its config", file=sys.stderr
      )
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return _fail(f"--out={out}: cannot create: {e}")
  written = figure1.write(bn, nobn, out)
  print(figure1.summary_table(bn, nobn))
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("figure1"))
