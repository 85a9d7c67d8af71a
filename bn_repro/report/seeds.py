"""Figure 1 over seeds: a net's seed runs, their mean and band, the probe's band growth and
drift per seed, and the issue's targets for Figure 1 checked on them.

A net is given as one run directory, or as a directory of run directories (one per seed,
as `bn-repro --seeds=N` writes them: seed0/, seed1/, ...). Runs are told apart by their
configs (model.use_bn, seed), never by directory names.
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from bn_repro.errors import UserError
from bn_repro.report.results import PROBE_KEYS, Run, load_run
from bn_repro.report.tables import fmt, md_table
from bn_repro.rundir import RunDir

BAND_STEPS = 5_000  # the band's growth is measured over the evals in (0, BAND_STEPS]
BAND_LIMITS = (0.67, 1.5)  # with BN the band stays within these multiples of its first value
EARLY_STEPS = (250, 1_000)  # BN's lead is measured at the evals in (0, 1,000], 250 first
MIN_LEAD = 0.3  # ... and must be at least this
GROWTH_RATIO = 3.0  # without BN the band grows at least this many times as much as with BN


def load_net(path: str, max_step: int | None = None, probe: str = "probe") -> list[Run]:
  """The runs of one net: `path` itself, or its subdirectories that hold runs, by seed."""
  if RunDir(path).has_metrics() or not os.path.isdir(path):
    return [load_run(path, max_step, probe)]
  subdirs = sorted(d for d in os.listdir(path) if RunDir(os.path.join(path, d)).has_metrics())
  if not subdirs:
    raise UserError(f"{path} holds neither a run nor run directories (one per seed)")
  runs = [load_run(os.path.join(path, d), max_step, probe) for d in subdirs]
  return sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, r.path))


def check_nets(bn: Sequence[Run], nobn: Sequence[Run]) -> None:
  """UserError unless every run of `bn` has BN and every run of `nobn` has none, by config;
  a swap is named as such."""
  for runs in (bn, nobn):
    for r in runs:
      if r.use_bn is None:
        raise UserError(
          f"{r.path} has no model.use_bn in a config.json; Figure 1 tells BN from no-BN "
          "runs by their configs: give run directories written by bn-repro"
        )
  if all(not r.use_bn for r in bn) and all(r.use_bn for r in nobn):
    raise UserError(
      f"the runs are swapped: {bn[0].path} has model.use_bn=False and {nobn[0].path} "
      "model.use_bn=True; exchange --bn and --nobn"
    )
  for runs, want, name in ((bn, True, "--bn"), (nobn, False, "--nobn")):
    wrong = [r.path for r in runs if r.use_bn != want]
    if wrong:
      raise UserError(
        f"{name}: {', '.join(wrong)} has model.use_bn={not want}; give {name} runs "
        f"{'with' if want else 'without'} BN only"
      )


def accuracy_band(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Steps every run has, and the accuracy's mean, min and max over the runs there."""
  steps = sorted(set.intersection(*(set(r.accuracy) for r in runs)))
  a = np.array([[r.accuracy[s] for s in steps] for r in runs], dtype=np.float64).reshape(
    len(runs), len(steps)
  )
  return np.array(steps), a.mean(0), a.min(0), a.max(0)


@dataclasses.dataclass
class SeedStats:
  """One run's Figure 1 numbers."""

  seed: int | None
  acc_250: float | None
  acc_1000: float | None
  final: float | None
  band_first: float | None  # p85 - p15 at the first eval after step 0
  band_min: float | None  # min and max of band / band_first over (0, BAND_STEPS]
  band_max: float | None
  drift: dict[str, float]


def band_ratios(run: Run, last: int = BAND_STEPS) -> tuple[float | None, list[float]]:
  """The band (p85 - p15) at the first eval after step 0, and band / it at each eval in
  (0, last]; (None, []) when there is none."""
  steps = [s for s in run.steps if 0 < s <= last and s in run.p15 and s in run.p85]
  widths = [run.p85[s] - run.p15[s] for s in steps]
  if not widths or not widths[0] > 0:
    return None, []
  return widths[0], [w / widths[0] for w in widths]


def seed_stats(run: Run) -> SeedStats:
  from bn_repro.report.figure1 import run_drift  # figure1 imports this module

  first, ratios = band_ratios(run)
  last = max(run.accuracy) if run.accuracy else None
  return SeedStats(
    seed=run.seed,
    acc_250=run.accuracy.get(EARLY_STEPS[0]),
    acc_1000=run.accuracy.get(EARLY_STEPS[1]),
    final=None if last is None else run.accuracy[last],
    band_first=first,
    band_min=min(ratios) if ratios else None,
    band_max=max(ratios) if ratios else None,
    drift=run_drift(run),
  )


def _mean(values: Sequence[float | None]) -> float | None:
  v = [x for x in values if x is not None and math.isfinite(x)]
  return float(np.mean(v)) if v else None


def _spread(values: Sequence[float | None], spec: str) -> str:
  """ "mean (min–max)" over seeds."""
  v = [x for x in values if x is not None and math.isfinite(x)]
  if not v:
    return fmt(None)
  if len(v) == 1:
    return fmt(v[0], spec)
  return f"{fmt(float(np.mean(v)), spec)} ({fmt(min(v), spec)}–{fmt(max(v), spec)})"


def seeds_table(name: str, runs: Sequence[Run]) -> list[str]:
  """Per seed, then over seeds: accuracy early and last, the band's growth, the drift."""
  stats = [seed_stats(r) for r in runs]
  header = [
    name,
    "acc @ 250",
    "acc @ 1,000",
    "last acc",
    "band at first eval",
    f"band / first, min–max ≤ {BAND_STEPS:,}",
    "drift p15",
    "drift p50",
    "drift p85",
  ]
  rows = []
  for s in stats:
    rows.append(
      [
        f"seed {fmt(s.seed)}",
        fmt(s.acc_250),
        fmt(s.acc_1000),
        fmt(s.final),
        fmt(s.band_first, ".3f"),
        f"{fmt(s.band_min, '.2f')}–{fmt(s.band_max, '.2f')}",
      ]
      + [fmt(s.drift[k], ".3f") for k in PROBE_KEYS]
    )
  if len(stats) > 1:
    rows.append(
      [
        f"mean (min–max) of {len(stats)}",
        _spread([s.acc_250 for s in stats], ".4f"),
        _spread([s.acc_1000 for s in stats], ".4f"),
        _spread([s.final for s in stats], ".4f"),
        _spread([s.band_first for s in stats], ".3f"),
        f"max {_spread([s.band_max for s in stats], '.2f')}",
      ]
      + [_spread([s.drift[k] for s in stats], ".3f") for k in PROBE_KEYS]
    )
  return md_table(header, rows)


def lead(bn: Run, nobn: Run) -> tuple[float | None, float | None]:
  """BN's accuracy minus no BN's at step 250, and its minimum over the evals in (0, 1,000]."""
  steps = [s for s in sorted(set(bn.accuracy) & set(nobn.accuracy)) if 0 < s <= EARLY_STEPS[1]]
  margins = [bn.accuracy[s] - nobn.accuracy[s] for s in steps]
  at = EARLY_STEPS[0]
  first = bn.accuracy[at] - nobn.accuracy[at] if at in bn.accuracy and at in nobn.accuracy else None
  return first, (min(margins) if margins else None)


def targets(bn: Sequence[Run], nobn: Sequence[Run]) -> list[tuple[str, str, bool | None]]:
  """Figure 1's targets: (the target, what the runs show, held: True / False / None)."""
  pairs = list(zip(bn, nobn))
  leads = [lead(b, n) for b, n in pairs]
  shown = "; ".join(
    f"seed {fmt(b.seed)}: {fmt(f, '.3f')} at 250, min {fmt(m, '.3f')}"
    for (b, _), (f, m) in zip(pairs, leads)
  )
  known = [(f, m) for f, m in leads if f is not None and m is not None]
  ok_lead = (
    all(f >= MIN_LEAD and m >= MIN_LEAD for f, m in known)
    if known and len(known) == len(leads)
    else None
  )
  out = [
    (
      f"BN ahead by ≥ {MIN_LEAD} at step 250 and every eval through 1,000, every seed",
      shown,
      ok_lead,
    )
  ]
  bn_stats, nobn_stats = [seed_stats(r) for r in bn], [seed_stats(r) for r in nobn]
  lo, hi = BAND_LIMITS
  within = [
    s.band_min is not None and s.band_max is not None and lo <= s.band_min and s.band_max <= hi
    for s in bn_stats
  ]
  out.append(
    (
      f"with BN the 15–85 band stays within {lo}–{hi}× its first value over the first "
      f"{BAND_STEPS:,} steps, every seed",
      "; ".join(
        f"seed {fmt(s.seed)}: {fmt(s.band_min, '.2f')}–{fmt(s.band_max, '.2f')}" for s in bn_stats
      ),
      all(within) if bn_stats and all(s.band_min is not None for s in bn_stats) else None,
    )
  )
  g_bn, g_nobn = _mean([s.band_max for s in bn_stats]), _mean([s.band_max for s in nobn_stats])
  ratio = g_nobn / g_bn if g_bn and g_nobn is not None else None
  out.append(
    (
      f"without BN the band grows ≥ {GROWTH_RATIO:g}× as much (max band / first, mean over seeds)",
      f"without BN {fmt(g_nobn, '.2f')}, with BN {fmt(g_bn, '.2f')}: {fmt(ratio, '.2f')}×",
      None if ratio is None else ratio >= GROWTH_RATIO,
    )
  )
  return out


def verdict(held: bool | None) -> str:
  return {True: "holds", False: "does not hold", None: "not measured"}[held]


def targets_markdown(bn: Sequence[Run], nobn: Sequence[Run]) -> list[str]:
  rows = [[t, shown, verdict(held)] for t, shown, held in targets(bn, nobn)]
  return md_table(["target", "measured", "verdict"], rows)
