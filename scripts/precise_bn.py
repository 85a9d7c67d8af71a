"""Precise BN: a trained run's population statistics re-estimated with Algorithm 2.

Usage:
  python scripts/precise_bn.py --workdir=RUN [--batches=1,10,100,1000] [--unbiased] \
      [--out=DIR] [--step=N] [--fallback_checkpoint] [--override=data.idx_dir=DIR ...]

Evaluates the checkpoint with the statistics it stores (the EMA kept during training,
per its bn.population) and with Algorithm 2's for each N: with the weights frozen, the
exact mean over N training batches of every BN layer's batch mean and variance (biased,
or with --unbiased times m/(m-1)), from the training-mode forward the trainer uses
(bn_repro.report.population). Prints a table and writes into DIR (default: RUN_precise_bn):
  precise_bn.json  the table's rows and what produced them
  run/             a run directory of its own: the source's config, a checkpoint whose
                   batch_stats are those of the largest N, and its source record; this
                   script and scripts/adabn.py read it like any run
The source run is never written. Exit codes: 0 done; 2 bad input (one line on stderr,
nothing written).
"""

import sys

from bn_repro import cli, runs
from bn_repro.report import population


def _precise_bn(argv) -> None:
  parser = runs.argument_parser(__doc__.splitlines()[0])
  parser.add_argument(
    "--batches",
    default="1,10,100,1000",
    help="comma-separated numbers of training batches Algorithm 2 averages",
  )
  args = parser.parse_args(argv)
  batches = runs.positive_ints(args.batches, "--batches")
  out = runs.output_dir(args.out, args.workdir, "precise_bn")
  runs.check_new(population.saved_run_dir(out))
  run = runs.open_from_args(args)

  result = population.precise_bn(run, batches)
  print(
    f"{args.workdir} at step {run.step}, Algorithm 2 "
    f"{'with' if args.unbiased else 'without'} m/(m-1), batch m = {result.batch_size}:"
    f"\n\n{result.table()}"
  )
  written = population.write_precise_bn(out, run, result, args.unbiased)
  print(f"\nWrote {' and '.join(written)}")


def main(argv=None) -> int:
  cli.own_log_lines_only()
  return runs.run_script("precise_bn", lambda: _precise_bn(argv))


if __name__ == "__main__":
  sys.exit(main())
