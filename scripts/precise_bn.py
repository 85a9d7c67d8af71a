"""Precise BN: a trained run's population statistics re-estimated with Algorithm 2.

Usage:
  python scripts/precise_bn.py --workdir=RUN [--batches=1,10,100,1000] [--unbiased] \
      [--out=DIR] [--step=N] [--fallback_checkpoint] [--override=data.idx_dir=DIR ...]

Evaluates the checkpoint with the statistics it stores (the EMA kept during training,
per its bn.population) and with Algorithm 2's for each N: with the weights frozen, the
exact mean over N training batches of every BN layer's batch mean and variance (biased,
or with --unbiased times m/(m-1)), from the training-mode forward the trainer uses.
Prints a table and writes into DIR (default: RUN_precise_bn):
  precise_bn.json  the table's rows and what produced them
  run/             a new run directory: the source's config.json, a checkpoint whose
                   batch_stats are those of the largest N, and source.json; this script
                   and scripts/adabn.py read it like any run
The source run is never written. Exit codes: 0 done; 2 bad input (one line on stderr,
nothing written).
"""

import os
import sys

# Make `bn_repro` importable when run as `python scripts/precise_bn.py`.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

from bn_repro import runs  # pylint: disable=wrong-import-position
from bn_repro.rundir import write_json

RESULTS_FILE = "precise_bn.json"
RUN_DIR = "run"
HEADER = ("statistics", "batches", "examples", "eval accuracy", "eval loss", "change in accuracy")


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
  run_dir = os.path.join(out, RUN_DIR)
  runs.check_new(run_dir)
  run = runs.open_from_args(args)

  stored = run.require_population().evaluate(run.state)
  rows = [{"statistics": f"stored ({run.stored_statistics})", "batches": None} | stored]
  for n in batches:
    state = run.require_population().precise_population(run.state, n)
    rows.append(
      {"statistics": "Algorithm 2", "batches": n} | run.require_population().evaluate(state)
    )
    if n == max(batches):
      largest = state
  batch_size = run.config.batch_size
  table = runs.markdown_table(
    HEADER,
    [
      (
        r["statistics"],
        r["batches"] or "—",
        r["batches"] and r["batches"] * batch_size or "—",
        r["eval/accuracy"],
        r["eval/loss"],
        r["eval/accuracy"] - stored["eval/accuracy"],
      )
      for r in rows
    ],
  )
  print(
    f"{args.workdir} at step {run.step}, Algorithm 2 "
    f"{'with' if args.unbiased else 'without'} m/(m-1), batch m = {batch_size}:\n\n{table}"
  )

  source = {
    "workdir": os.path.abspath(args.workdir),
    "step": run.step,
    "batches": max(batches),
    "unbiased": args.unbiased,
  }
  runs.save_run(run_dir, run, largest, source)
  write_json(
    os.path.join(out, RESULTS_FILE),
    {"source": source, "batch_size": batch_size, "rows": rows, "run": run_dir, "table": table},
  )
  print(f"\nWrote {os.path.join(out, RESULTS_FILE)} and {run_dir}")


def main(argv=None) -> int:
  return runs.run_script("precise_bn", lambda: _precise_bn(argv))


if __name__ == "__main__":
  sys.exit(main())
