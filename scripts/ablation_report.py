"""Figures and tables of the ablation sweeps (bn_repro/configs/ablation_sweeps.py).

Usage (any subset of the four sweep dirs):
  python scripts/ablation_report.py --variants=runs/abl/variants --ics=runs/abl/ics \
      --weight_scale=runs/abl/weight_scale --regularization=runs/abl/regularization \
      --report_dir=runs/abl/report

Writes into --report_dir, per sweep given, what bn_repro.report.ablations writes:
<name>.png and <name>.md, and ABLATIONS.md with all tables and this command.
Exit codes: 0 written; 2 bad input (one line on stderr, nothing written).
"""

import functools
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from bn_repro import cli
from bn_repro.errors import UserError
from bn_repro.report import ablations

FLAGS = flags.FLAGS
for _name in ablations.REPORTS:
  flags.DEFINE_string(_name, None, f"Sweep dir of ablation_sweeps:{_name}.")
flags.DEFINE_string("report_dir", None, "Output directory (created if needed).")

_fail = functools.partial(cli.report, "ablation_report")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  given = {name: getattr(FLAGS, name) for name in ablations.REPORTS if getattr(FLAGS, name)}
  if not given:
    return _fail(f"give at least one of {', '.join('--' + n for n in ablations.REPORTS)}")
  if not FLAGS.report_dir:
    return _fail("--report_dir: required")
  try:
    ablations.check_sweep_dirs(given)
    written = ablations.write(given, FLAGS.report_dir, shlex.join([sys.executable] + sys.argv))
  except UserError as e:
    return _fail(str(e))
  except OSError as e:
    return _fail(f"--report_dir={FLAGS.report_dir}: cannot write: {e}")
  print("Wrote " + ", ".join(written))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.one_line_flags_parser("ablation_report"))
