"""Every claim of the paper re-derived at small scale, with a verdict: `bn-repro-claims`.

  experiments  the MNIST MLP runs behind the claims (trained, or found finished)
  verdicts     each claim measured on those runs: sentence, effect over seeds, verdict
  scale        Sec. 3.3's scale invariance, measured on the network directly
  cli          the command line, CLAIMS.md

`collect` measures every claim from a claims directory whose runs have finished.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

from bn_repro.claims import experiments, verdicts
from bn_repro.claims.verdicts import Claim, not_measured

INCEPTION_COMMAND = (
  "bn-repro-sweep --sweep=inception_sweeps:small_five,t10k --workdir=runs/small_five "
  "--parallel=2 --override=num_steps=2000 && bn-repro-claims ... --inception_sweep=runs/small_five"
)


def _dirs(workdir: str, experiment: str, net: str, seeds: Sequence[int], lr: float) -> list[str]:
  group = next(g for g in experiments.EXPERIMENTS[experiment] if g.name == net)
  return [experiments.run_dirs(workdir, group, seeds)[(lr, s)] for s in seeds]


def _lr_results(workdir: str, seeds: Sequence[int]) -> dict[tuple[str, float], list]:
  from bn_repro.rundir import RunDir

  out: dict[tuple[str, float], list] = {}
  for group in experiments.EXPERIMENTS["lr"]:
    for (lr, _), d in experiments.run_dirs(workdir, group, seeds).items():
      status = RunDir(d).status().get("status", "pending")
      out.setdefault((group.name, lr), []).append((status, verdicts.last_value(d, "eval/accuracy")))
  return out


def inception_claims(sweep_dir: str | None) -> list[Claim]:
  """Figures 2 and 3 from a finished small_five sweep, or "not measured"."""
  sentences = [
    (
      "Figure 3: fewer steps",
      "BN variants reach Inception's best accuracy in a fraction of "
      "its steps (BN-x5: 14×, BN-x30: 11× fewer).",
    ),
    ("Figure 3: BN-x5-Sigmoid", "With BN, the sigmoid Inception trains (69.8% top-1)."),
    ("Figure 2: all train", "The five variants all train."),
  ]
  if not sweep_dir:
    return [not_measured(t, s, "Figures 2, 3", INCEPTION_COMMAND) for t, s in sentences]
  from bn_repro.report import figure3, results

  fig = figure3.figure3(results.load_sweep(sweep_dir, target=1.0))
  if fig is None:
    return [not_measured(t, s, "Figures 2, 3", INCEPTION_COMMAND) for t, s in sentences]
  base = fig.row("inception")
  fast = [fig.row(v) for v in ("bn_x5", "bn_x30")]
  fewer = (
    None
    if base is None or base.steps is None or any(r is None for r in fast)
    else all(r is not None and r.steps is not None and r.steps < base.steps for r in fast)
  )
  sig = fig.row("bn_x5_sigmoid")
  learns = (
    None
    if sig is None or sig.point.best_accuracy is None or not fig.num_classes
    else sig.point.best_accuracy >= 2 / fig.num_classes
  )
  trains = all(p.status != "diverged" for p in fig.points) if fig.points else None
  return [
    Claim(t, s, "Figures 2, 3", text, verdicts.judged(held))
    for (t, s), text, held in zip(sentences, figure3.claims(fig), (fewer, learns, trains))
  ]


def future_work(workdir: str) -> list[Claim]:
  run = os.path.join(workdir, "figure1", "bn", f"lr{experiments.BASE_LR:g}_seed0")
  return [
    not_measured(
      "Future work: recurrent networks",
      "BN applies to recurrent networks, where internal covariate shift and vanishing or "
      "exploding gradients are severe.",
      "Sec. 5",
      "bn-repro --config=seq_mnist:bn,t10k --workdir=runs/lstm_bn and "
      "--config=seq_mnist:nobn,t10k --workdir=runs/lstm_nobn",
    ),
    not_measured(
      "Future work: domain adaptation",
      "Recomputing the population statistics on a new data distribution adapts the "
      "network to it (AdaBN).",
      "Sec. 5",
      f"python scripts/adabn.py --workdir={run}",
    ),
    not_measured(
      "Initialization",
      "With BN the network is less sensitive to the scale of its initial weights.",
      "Sec. 1, 3.3",
      "bn-repro-sweep --sweep=ablation_sweeps:weight_scale,t10k --workdir=runs/abl/ws "
      "&& python scripts/ablation_report.py --weight_scale=runs/abl/ws --report_dir=runs/abl",
    ),
  ]


def collect(
  workdir: str,
  seeds: Sequence[int],
  configs: Mapping[str, Any],
  inception_sweep: str | None = None,
) -> list[Claim]:
  """Every claim, from the finished runs in `workdir`; `configs` holds the figure1
  experiment's "bn" and "nobn" configs (for the scale measurement)."""
  from bn_repro.claims import scale

  lr = experiments.BASE_LR
  bn_dirs, nobn_dirs = (_dirs(workdir, "figure1", n, seeds, lr) for n in ("bn", "nobn"))
  bn, nobn = verdicts.load(bn_dirs), verdicts.load(nobn_dirs)
  ics = [_dirs(workdir, "ics", n, seeds, lr) for n in ("bn", "nobn")]
  return (
    [
      verdicts.accuracy_higher(bn, nobn),
      verdicts.distribution_stable(bn, nobn),
      verdicts.covariate_shift(*ics),
      scale.scale_invariance(configs["bn"], configs["nobn"]),
      verdicts.regularizes(bn_dirs, nobn_dirs),
      verdicts.saturating(bn, nobn),
      verdicts.higher_lr(_lr_results(workdir, seeds)),
    ]
    + inception_claims(inception_sweep)
    + future_work(workdir)
  )
