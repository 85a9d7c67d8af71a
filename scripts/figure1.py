"""Paper Figure 1: MNIST MLP trained with and without batch normalization.

(a) test accuracy vs training step for both nets (over seeds: the mean and a min-max
band); (b) without BN and (c) with BN: the 15th, 50th and 85th percentiles of the input
to one typical sigmoid of the last hidden layer, vs training step, for the first seed:
by default in the training network (bn_repro.training.step.evaluate's probe).

Usage:
  python scripts/figure1.py --bn=DIR --nobn=DIR --out=OUT_DIR [--max_step=N] \
      [--probe=train|inference]

DIR is a run directory or a directory of one run per seed (bn-repro --seeds=N). Which
net has BN is read from the runs' configs (model.use_bn); swapped flags are refused.

Writes into OUT_DIR: figure1.png (panels a, b, c), figure1a.png, figure1b.png,
figure1c.png, figure1.csv (every eval step of either first seed) and figure1.md
(accuracy table, per-net summary, every seed's band growth and drift and the targets,
also printed). The figures and
tables are bn_repro.report.figure1's. Exit codes: 0 written; 2 bad input (one
line on stderr, nothing written).
"""

import functools
import os
from collections.abc import Sequence

from absl import app, flags

from bn_repro import cli
from bn_repro.errors import UserError
from bn_repro.report import figure1, seeds

FLAGS = flags.FLAGS
flags.DEFINE_string("bn", None, "Run dir of the net with BN, or a dir of its seed runs.")
flags.DEFINE_string("nobn", None, "Run dir of the net without BN, or a dir of its seed runs.")
flags.DEFINE_string("out", None, "Output dir (created if needed).")
flags.DEFINE_integer("max_step", None, "Only use events with step <= max_step.")
flags.DEFINE_enum(
  "probe",
  "train",
  ["train", "inference"],
  "Panels b, c: the training network's probe (probe/*, BN with batch statistics) or the "
  "inference network's (probe_inference/*: runs with --config.probe_network=both).",
)

_fail = functools.partial(cli.report, "figure1")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("bn", "nobn", "out"):
    if not FLAGS[name].value:
      return _fail(f"--{name}: required")
  prefix = "probe" if FLAGS.probe == "train" else "probe_inference"
  nets = {}
  for name in ("bn", "nobn"):
    try:
      nets[name] = seeds.load_net(str(FLAGS[name].value), FLAGS.max_step, prefix)
    except UserError as e:
      return _fail(f"--{name}={FLAGS[name].value}: {e}")
  bn, nobn = nets["bn"], nets["nobn"]
  try:
    seeds.check_nets(bn, nobn)
  except UserError as e:
    return _fail(str(e))
  out = FLAGS.out
  if os.path.exists(out) and not os.path.isdir(out):
    return _fail(f"--out={out}: exists and is not a directory")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    return _fail(f"--out={out}: cannot create: {e}")
  written = figure1.write(bn, nobn, out)
  print(figure1.summary_table(bn[0], nobn[0]))
  print("\n".join(figure1.seeds_markdown(bn, nobn)))
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("figure1"))
