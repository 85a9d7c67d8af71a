"""AdaBN (Li et al. 2016): a trained run's BN statistics re-estimated on a shifted domain.

Usage:
  python scripts/adabn.py --workdir=RUN [--shifts=invert,rotate:30,rotate:60,noise:0.3] \
      [--batches=100] [--unbiased] [--out=DIR] [--step=N] [--fallback_checkpoint] \
      [--override=data.idx_dir=DIR ...]

For each shift (bn_repro/data/shift.py: none, invert, rotate:<degrees>,
noise:<std in [0, 1]>) it evaluates the checkpoint on the clean eval set, on the
shifted eval set with the source's stored statistics (before), and on the shifted
eval set after Algorithm 2 re-estimated every BN layer's statistics over --batches
batches of the shifted training images (labels unused; the weights are not touched;
bn_repro.report.population). Noise is drawn with seed 0 on the training images and
seed 1 on the eval images. Prints a table and writes into DIR (default: RUN_adabn)
adabn.json and adabn.png (a bar chart). The source run is never written. Exit codes:
0 done; 2 bad input (one line on stderr, nothing written).
"""

import sys

from bn_repro import cli, data, runs
from bn_repro.errors import UserError
from bn_repro.report import population


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

  rows = population.adabn(run, shifts, args.batches)
  print(f"{population.adabn_title(run, args.batches)}:\n\n{population.adabn_table(rows)}")
  written = population.write_adabn(out, run, rows, args.batches, args.unbiased)
  print(f"\nWrote {' and '.join(written)}")


def main(argv=None) -> int:
  cli.own_log_lines_only()
  return runs.run_script("adabn", lambda: _adabn(argv))


if __name__ == "__main__":
  sys.exit(main())
