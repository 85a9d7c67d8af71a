"""`bn-repro-claims`: train (or read) the small experiments and print one line per claim.

  bn-repro-claims --workdir=runs/claims [--preset=t10k] [--seeds=3] [--workers=2] \\
      [--override=field=value ...] [--inception_sweep=DIR]

Trains what bn_repro.claims.experiments defines into --workdir (runs already finished
there are read, not trained again), then prints for each claim of the paper, of its stated
advantages and of its two future-work directions: the verdict (holds / does not hold / not
measured), the claim, and the measured effect with its spread over seeds, or the command
that would measure it. Writes CLAIMS.md into --workdir. Offline:
  BN_REPRO_MNIST_DIR=DIR bn-repro-claims --workdir=runs/claims --preset=t10k
Exit codes: 0 done; 2 bad input (one line on stderr, nothing written).
"""

import shlex
import sys
import time
from collections.abc import Sequence

from absl import app, flags, logging

from bn_repro import cli, fields
from bn_repro.claims import Claim, collect, experiments
from bn_repro.errors import UserError
from bn_repro.report.tables import md_table

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs and CLAIMS.md go.")
_PRESET = flags.DEFINE_string("preset", "", "Data preset of every run (t10k: offline IDX files).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every setting.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes training groups side by side.")
_OVERRIDE = flags.DEFINE_multi_string(
  "override", [], "field=value set on every run after the experiment's own fields."
)
_INCEPTION = flags.DEFINE_string(
  "inception_sweep", "", "A finished inception_sweeps:small_five sweep dir (Figures 2, 3)."
)
flags.mark_flags_as_required(["workdir"])


def line(c: Claim) -> str:
  return f"[{c.verdict}] {c.topic}: {c.sentence} ({c.where}) — {c.measured}"


def markdown(claims: Sequence[Claim], command: str, seconds: float) -> str:
  rows = [[c.topic, f"{c.sentence} ({c.where})", c.measured, c.verdict] for c in claims]
  return "\n".join(
    ["# Claims of Ioffe & Szegedy (2015), measured", "", f"`{command}`", ""]
    + md_table(["", "the paper's claim", "measured (spread over seeds)", "verdict"], rows)
    + ["", f"Wall time: {seconds:.0f} s (training and measuring).", ""]
  )


def _main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return cli.report("bn-repro-claims", f"unexpected arguments: {' '.join(argv[1:])}")
  t0 = time.perf_counter()
  workdir = str(_WORKDIR.value)
  seeds = list(range(_SEEDS.value))
  try:
    if not seeds:
      raise UserError(f"must be at least 1, got {_SEEDS.value}", field="--seeds")
    overrides = fields.parse_assignments(_OVERRIDE.value)
    groups = [g for gs in experiments.EXPERIMENTS.values() for g in gs]
    experiments.run_all(workdir, groups, seeds, _PRESET.value, overrides, _WORKERS.value)
    fig1 = {g.name: g for g in experiments.EXPERIMENTS["figure1"]}
    configs = {
      n: experiments.configs(g, seeds[:1], _PRESET.value, overrides)[0] for n, g in fig1.items()
    }
    claims = collect(workdir, seeds, configs, _INCEPTION.value or None)
  except UserError as e:
    return cli.report("bn-repro-claims", str(e))
  seconds = time.perf_counter() - t0
  for c in claims:
    print(line(c))
  path = f"{workdir}/CLAIMS.md"
  with open(path, "w") as f:
    f.write(markdown(claims, shlex.join(["bn-repro-claims"] + sys.argv[1:]), seconds))
  print(f"Wrote {path} ({seconds:.0f} s)")
  return 0


def run() -> None:
  """Console-script entry point."""
  logging.set_verbosity(logging.WARNING)
  cli.own_absl_lines_only()
  app.run(_main, flags_parser=cli.one_line_flags_parser("bn-repro-claims"))


if __name__ == "__main__":
  run()
