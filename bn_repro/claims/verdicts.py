"""Each claim of the paper as measured on the runs of bn_repro.claims.experiments: the claim
in a sentence, the effect with its spread over seeds, and a verdict.

Verdicts: "holds", "does not hold", or "not measured" (with the command that measures it).
Every function here reads finished runs and computes; nothing is trained or written.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bn_repro.metrics import series
from bn_repro.report import seeds as seeds_lib
from bn_repro.report.results import Run, load_run
from bn_repro.report.tables import fmt
from bn_repro.rundir import RunDir

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured"
TARGET = 0.9  # "steps to 90 % test accuracy"


@dataclasses.dataclass
class Claim:
  topic: str
  sentence: str  # the paper's claim, in a sentence
  where: str  # where the paper makes it
  measured: str  # the effect, with its spread over seeds; or what would measure it
  verdict: str


def judged(held: bool | None) -> str:
  return UNMEASURED if held is None else HOLDS if held else FAILS


def spread(values: Sequence[float | None], spec: str = ".3f") -> str:
  """ "mean (min–max over N seeds)"; one value as itself."""
  v = [x for x in values if x is not None and math.isfinite(x)]
  if not v:
    return "—"
  if len(v) == 1:
    return fmt(float(v[0]), spec)
  return f"{fmt(float(np.mean(v)), spec)} ({fmt(min(v), spec)}–{fmt(max(v), spec)} over {len(v)})"


def load(dirs: Sequence[str]) -> list[Run]:
  return [load_run(d) for d in dirs if RunDir(d).has_metrics()]


def last_value(run_dir: str, key: str) -> float | None:
  values = series(RunDir(run_dir).metrics(), key)[1] if RunDir(run_dir).has_metrics() else []
  return float(values[-1]) if values else None


# ---------------------------------------------------------------------------
# Figure 1 and what its runs show.


def accuracy_higher(bn: Sequence[Run], nobn: Sequence[Run]) -> Claim:
  mins, lasts, behind = [], [], []
  for b, n in zip(bn, nobn):
    steps = [s for s in sorted(set(b.accuracy) & set(n.accuracy)) if s > 0]
    margins = [b.accuracy[s] - n.accuracy[s] for s in steps]
    if not margins:
      continue
    mins.append(min(margins))
    lasts.append(margins[-1])
    behind += [s for s, m in zip(steps, margins) if m <= 0][:1]
  held = None if not mins else all(m > 0 for m in mins)
  text = (
    f"BN − no BN test accuracy over the evals after step 0: min {spread(mins)}, at the last "
    f"eval {spread(lasts)}"
  )
  if behind:
    text += f"; BN first not ahead at step {min(behind)}"
  return Claim(
    "Figure 1(a)",
    "With BN the test accuracy is higher throughout training.",
    "Figure 1(a), Sec. 4.1",
    text,
    judged(held),
  )


def distribution_stable(bn: Sequence[Run], nobn: Sequence[Run]) -> Claim:
  _, (_, within, ok_within), (_, growth, ok_growth) = seeds_lib.targets(bn, nobn)
  drift = [seeds_lib.seed_stats(r).drift["p50"] for r in bn]
  drift_nobn = [seeds_lib.seed_stats(r).drift["p50"] for r in nobn]
  held = None if ok_within is None or ok_growth is None else ok_within and ok_growth
  lo, hi = seeds_lib.BAND_LIMITS
  return Claim(
    "Figure 1(b, c)",
    "The input distribution of a last-layer sigmoid drifts a lot without BN and is much "
    "more stable with BN (training network).",
    "Figure 1(b, c), Sec. 4.1",
    f"band p85 − p15 / its first value over the first {seeds_lib.BAND_STEPS:,} steps, with "
    f"BN ({lo}–{hi}× wanted): {within}; max band growth {growth}; drift of p50 with BN "
    f"{spread(drift)}, without {spread(drift_nobn)}",
    judged(held),
  )


def steps_to(run: Run, target: float = TARGET) -> int | None:
  return next((s for s in sorted(run.accuracy) if run.accuracy[s] >= target), None)


def saturating(bn: Sequence[Run], nobn: Sequence[Run]) -> Claim:
  sb, sn = [steps_to(r) for r in bn], [steps_to(r) for r in nobn]
  pairs = [(b, n) for b, n in zip(sb, sn) if b is not None]
  held = None if not pairs else all(n is None or b < n for b, n in pairs)
  as_float = lambda xs: [None if x is None else float(x) for x in xs]
  never = sum(n is None for n in sn)
  return Claim(
    "Saturating nonlinearities",
    "BN keeps sigmoid inputs out of saturation, so sigmoid networks train fast.",
    "Sec. 3.3, 4.2.1",
    f"steps to {TARGET:.0%} test accuracy, sigmoid: with BN {spread(as_float(sb), '.0f')}, "
    f"without {spread(as_float(sn), '.0f')}"
    + (f" ({never} seed(s) without BN never)" if never else ""),
    judged(held),
  )


def regularizes(bn_dirs: Sequence[str], nobn_dirs: Sequence[str]) -> Claim:
  def gaps(dirs):
    out = []
    for d in dirs:
      train, test = last_value(d, "train_eval/accuracy"), last_value(d, "eval/accuracy")
      if train is not None and test is not None:
        out.append(train - test)
    return out

  gb, gn = gaps(bn_dirs), gaps(nobn_dirs)
  held = None if not gb or not gn else float(np.mean(gb)) < float(np.mean(gn))
  return Claim(
    "Regularization",
    "BN regularizes the model: it generalizes better and needs less Dropout.",
    "Sec. 3.4",
    f"train − test accuracy at the last eval (2,000 training examples): with BN "
    f"{spread(gb)}, without {spread(gn)}",
    judged(held),
  )


# ---------------------------------------------------------------------------
# Learning rates and internal covariate shift.


def higher_lr(results: dict[tuple[str, float], list[tuple[str, float | None]]]) -> Claim:
  """`results[(net, lr)]`: per seed (status, final eval accuracy)."""
  lrs = sorted({lr for _, lr in results})
  if not lrs:
    return Claim("Higher learning rates", "", "", "no runs", UNMEASURED)

  def mean_final(net: str, lr: float) -> float:  # a diverged run counts as 0
    runs = results.get((net, lr), [])
    return float(np.mean([a if s == "done" and a is not None else 0.0 for s, a in runs]))

  def diverged(net: str, lr: float) -> int:
    return sum(s == "diverged" for s, _ in results.get((net, lr), []))

  parts = []
  for lr in lrs:
    cell = []
    for net in ("bn", "nobn"):
      finals = [a for s, a in results.get((net, lr), []) if s == "done"]
      d = diverged(net, lr)
      cell.append(
        f"{'BN' if net == 'bn' else 'no BN'} {spread(finals)}" + (f", {d} diverged" if d else "")
      )
    parts.append(f"lr {lr:g}: " + "; ".join(cell))
  base, top = lrs[0], lrs[-1]
  held = (
    None
    if top == base
    else not diverged("bn", top)
    and mean_final("bn", top) >= mean_final("bn", base) - 0.02
    and mean_final("nobn", top) < mean_final("bn", top) - 0.05
  )
  return Claim(
    "Higher learning rates",
    "BN allows much higher learning rates: at 30× the base rate BN trains about as well as at "
    "the base rate, while without BN training fails (diverges or ends ≥ 0.05 below BN).",
    "Sec. 3.3, 4.2.1",
    "final test accuracy: " + " | ".join(parts),
    judged(held),
  )


def ics_layers(events: list[dict[str, Any]]) -> list[str]:
  return sorted({k.split("/")[1] for e in events for k in e if k.startswith("ics/")})


def covariate_shift(bn_dirs: Sequence[str], nobn_dirs: Sequence[str]) -> Claim:
  def medians(dirs):
    out: dict[str, list[float]] = {}
    for d in dirs:
      if not RunDir(d).has_metrics():
        continue
      events = RunDir(d).metrics()
      for layer in ics_layers(events)[1:]:  # the first layer has no layer before it
        values = [v for s, v in zip(*series(events, f"ics/{layer}/rel")) if s > 0]
        if values:
          out.setdefault(layer, []).append(float(np.median(values)))
    return out

  mb, mn = medians(bn_dirs), medians(nobn_dirs)
  layers = sorted(set(mb) & set(mn))
  held = None if not layers else all(np.mean(mb[l]) < np.mean(mn[l]) for l in layers)
  return Claim(
    "Internal covariate shift",
    "BN reduces internal covariate shift, the change of each layer's input distribution "
    "as the layers before it train.",
    "Sec. 1–3",
    "median over evals of ||G − G'|| / ||G|| (Santurkar et al. 2018, Def. 2.1) per layer, "
    "with BN vs without: " + "; ".join(f"{l}: {spread(mb[l])} vs {spread(mn[l])}" for l in layers),
    judged(held),
  )


def not_measured(topic: str, sentence: str, where: str, command: str) -> Claim:
  return Claim(topic, sentence, where, f"measure with: `{command}`", UNMEASURED)


ClaimFn = Callable[..., Claim]
