"""Figures 2 and 3 of a sweep of the paper's five Inception variants, ours next to the paper's.

A point is a paper variant when its config spec ends in one (inception_small:bn_x5);
Figure 3's table holds, per variant, the steps to Inception's best eval accuracy, the
speed-up over Inception and the max accuracy; Figure 2 is eval accuracy vs step.
"""

import dataclasses

from matplotlib.figure import Figure

from bn_repro.report import paper, plots
from bn_repro.report.paper import BASELINE, PAPER_BATCH, PAPER_TARGET, PAPER_VARIANTS
from bn_repro.report.results import PointResult, SweepResults
from bn_repro.report.tables import NONE, csv_cell, fmt, md_table, times

NEVER = "never"


def variant_of(p: PointResult) -> str | None:
  """ "inception_small:bn_x30,cifar10" -> "bn_x30"; None if not a paper variant."""
  _, sep, variant = p.config_spec.rpartition(":")
  variant = variant.partition(",")[0]
  return variant if sep and variant in PAPER_VARIANTS else None


@dataclasses.dataclass
class VariantRow:
  """One variant's Figure 3 numbers (ours)."""

  variant: str
  point: PointResult
  steps: int | None  # first eval step at or above Inception's best accuracy
  speedup: float | None  # Inception's steps / ours
  seed_steps: list[int | None] = dataclasses.field(default_factory=list)  # every point's

  @property
  def steps_spread(self) -> str:
    """Steps to the target over the variant's points (seeds): "mean (min–max), k of n"."""
    got = [s for s in self.seed_steps if s is not None]
    if len(self.seed_steps) < 2:
      return fmt(self.steps)
    if not got:
      return f"{NEVER} (0 of {len(self.seed_steps)})"
    return (
      f"{sum(got) / len(got):.0f} ({min(got)}–{max(got)}), {len(got)} of {len(self.seed_steps)}"
    )

  @property
  def name(self) -> str:
    return paper.name(self.variant)

  @property
  def top5_at_max(self) -> float | None:
    step = self.point.best_step
    return None if step is None else self.point.top5.get(step)

  @property
  def never(self) -> bool:
    """Evaluated, but never at or above the baseline's best."""
    return self.steps is None and self.point.run is not None


@dataclasses.dataclass
class Figure3:
  baseline_best: float | None  # Inception's best eval accuracy (None: no evals yet)
  rows: list[VariantRow]  # one per variant, in the paper's order
  points: list[PointResult]  # every point of the sweep (repeats of a variant included)
  num_classes: int | None

  def row(self, variant: str) -> VariantRow | None:
    return next((r for r in self.rows if r.variant == variant), None)


def _speedup(base_steps: int | None, steps: int | None) -> float | None:
  """Inception's steps / a variant's; None when either is missing (or the variant's is 0)."""
  return base_steps / steps if base_steps is not None and steps else None


def _reach(p: PointResult, target: float | None) -> int | None:
  """The first eval step of `p` at or above `target`."""
  if p.run is None or target is None:
    return None
  return next((s for s in sorted(p.run.accuracy) if p.run.accuracy[s] >= target), None)


def figure3(res: SweepResults) -> Figure3 | None:
  """Figure 3's table when every point is a paper variant and one is `inception`.

  With several points of one variant (e.g. seeds), the first in sweep order is the row's;
  every point's steps to the same target are the row's `seed_steps` (the spread).
  """
  variants = [variant_of(p) for p in res.points]
  if not res.points or None in variants or BASELINE not in variants:
    return None
  first: dict[str, PointResult] = {}
  for v, p in zip(variants, res.points):
    assert v is not None  # None not in variants, checked above
    first.setdefault(v, p)
  best = first[BASELINE].best_accuracy
  reach: dict[str, int | None] = {}
  for v, p in first.items():
    reach[v] = (
      None
      if p.run is None or best is None
      else next((s for s in sorted(p.run.accuracy) if p.run.accuracy[s] >= best), None)
    )
  base_steps = reach[BASELINE]
  rows = [
    VariantRow(
      v,
      first[v],
      reach[v],
      _speedup(base_steps, reach[v]),
      [_reach(p, best) for vv, p in zip(variants, res.points) if vv == v],
    )
    for v in PAPER_VARIANTS
    if v in first
  ]
  classes = [p.value("model.num_classes") for p in res.points]
  classes = [c for c in classes if isinstance(c, int) and c > 0]
  return Figure3(best, rows, list(res.points), classes[0] if classes else None)


COLUMNS = (
  "variant",
  "model",
  "point",
  "status",
  "diverged_at",
  "baseline_best_accuracy",
  "steps_to_baseline_best",
  "speedup",
  "max_accuracy",
  "max_accuracy_step",
  "top5_at_max",
  f"paper_steps_to_{100 * PAPER_TARGET:.1f}_millions",
  "paper_max_accuracy",
  "paper_speedup",
  "steps_to_baseline_best_in_paper_steps",  # ours x batch / 32: the paper's unit
  f"paper_steps_to_{100 * PAPER_TARGET:.1f}_in_our_steps",  # the paper's x 32 / batch
)


def _units(r: VariantRow) -> tuple[float | None, float | None]:
  """Row r's steps in the paper's unit (examples / 32) and the paper's steps in ours."""
  batch = r.point.value("batch_size")
  paper_steps = paper.steps_millions(r.variant)
  if not isinstance(batch, int) or batch <= 0:
    return None, None
  ours = None if r.never or r.steps is None else paper.steps_between(r.steps, batch, PAPER_BATCH)
  theirs = (
    None if paper_steps is None else paper.steps_between(1e6 * paper_steps, PAPER_BATCH, batch)
  )
  return ours, theirs


def _count(steps: float | None) -> str:
  """A step count: as an integer, in millions from 100,000 on."""
  if steps is None:
    return NONE
  return f"{steps / 1e6:.3g}M" if steps >= 1e5 else f"{steps:.0f}"


def csv_rows(fig: Figure3) -> list[list[str]]:
  """figure3.csv: header, then one row per variant ("never": evaluated, never reached)."""
  rows = [list(COLUMNS)]
  for r in fig.rows:
    paper_steps = paper.steps_millions(r.variant)
    rows.append(
      [
        r.variant,
        r.name,
        r.point.name,
        r.point.status,
        csv_cell(r.point.diverged_at),
        csv_cell(fig.baseline_best),
        NEVER if r.never else csv_cell(r.steps),
        csv_cell(r.speedup),
        csv_cell(r.point.best_accuracy),
        csv_cell(r.point.best_step),
        csv_cell(r.top5_at_max),
        NEVER if paper_steps is None else csv_cell(paper_steps),
        csv_cell(paper.max_accuracy(r.variant)),
        csv_cell(paper.speedup(r.variant)),
        *(csv_cell(x) for x in _units(r)),
      ]
    )
  return rows


def markdown(fig: Figure3) -> list[str]:
  """Figure 3's table, ours next to the paper's."""
  target, bn_x30 = paper.percent(PAPER_TARGET), paper.percent(paper.max_accuracy("bn_x30"))
  seeds = any(len(r.seed_steps) > 1 for r in fig.rows)  # a column for the spread over seeds
  header = (
    [
      "model",
      "point",
      "status",
      f"steps to {fmt(fig.baseline_best)} (Inception's best)",
    ]
    + (["over seeds: mean (min–max), reached"] if seeds else [])
    + [
      "speed-up",
      "max accuracy (step)",
      "top-5 at max",
      f"paper: steps to {target}",
      "paper: max top-1",
      "paper: speed-up",
      "ours in the paper's steps (of 32)",
      "paper's steps in ours",
    ]
  )
  rows = []
  for r in fig.rows:
    p = r.point
    status = p.status + (f" at step {p.diverged_at}" if p.diverged_at is not None else "")
    paper_steps = paper.steps_millions(r.variant)
    rows.append(
      [
        r.name,
        f"`{p.name}`",
        status,
        NEVER if r.never else fmt(r.steps),
      ]
      + ([r.steps_spread] if seeds else [])
      + [
        times(r.speedup),
        f"{fmt(p.best_accuracy)} ({fmt(p.best_step)})",
        fmt(r.top5_at_max),
        NEVER if paper_steps is None else f"{paper_steps:.1f}M",
        paper.percent(paper.max_accuracy(r.variant)),
        times(paper.speedup(r.variant)),
        *(_count(x) for x in _units(r)),
      ]
    )
  return md_table(header, rows) + [
    "",
    "Steps: the first eval step whose accuracy is at or above Inception's best eval "
    f"accuracy (the paper: {target}, Inception's max); speed-up: Inception's steps / the "
    f"variant's. Paper numbers from Figure 3 (BN-x30's {bn_x30} after "
    f"{paper.BN_X30_MAX_AT}M steps). A paper step is one replica's update of "
    f"{PAPER_BATCH} examples; the last two columns convert by examples seen (ours x batch / "
    f"{PAPER_BATCH}, the paper's x {PAPER_BATCH} / batch).",
  ]


def _fewer_claim(fig: Figure3) -> str:
  """Ours for: BN reaches the baseline's best in a fraction of its steps."""
  base = fig.row(BASELINE)
  if fig.baseline_best is None:
    return "Inception has no eval yet."
  assert base is not None  # figure3() has an Inception row whenever it returns a Figure3
  parts = []
  for r in fig.rows:
    if r.variant == BASELINE:
      continue
    if r.point.run is None:
      parts.append(f"{r.name}: no eval yet")
    elif r.steps is None:
      parts.append(f"{r.name}: never (max {fmt(r.point.best_accuracy)})")
    elif not base.steps or not r.steps:
      parts.append(f"{r.name}: {r.steps} steps")
    else:
      parts.append(
        f"{r.name}: {r.steps} steps ({r.steps / base.steps:.2f} of Inception's; "
        f"{r.speedup:.2f}× fewer)"
      )
  return (
    f"Inception's best {fmt(fig.baseline_best)} first at step {base.steps}. "
    + ("; ".join(parts) if parts else "No BN variant in this sweep")
    + "."
  )


def _sigmoid_claim(fig: Figure3) -> str:
  """Ours for: BN-x5-Sigmoid learns (its max accuracy against chance)."""
  sig = fig.row("bn_x5_sigmoid")
  if sig is None:
    return "BN-x5-Sigmoid is not in this sweep."
  if sig.point.best_accuracy is None:
    return "BN-x5-Sigmoid has no eval yet."
  best = f"BN-x5-Sigmoid max accuracy {fmt(sig.point.best_accuracy)} (step {sig.point.best_step})"
  if fig.num_classes is None:
    return f"{best}; chance unknown (no model.num_classes)."
  chance = 1 / fig.num_classes
  ratio = sig.point.best_accuracy / chance
  verdict = "learns" if ratio >= 2 else "does not clearly learn (under 2× chance)"
  return f"{best} = {ratio:.1f}× chance (1/{fig.num_classes} = {chance:.4f}): {verdict}."


def _diverged_claim(fig: Figure3) -> str:
  """Ours for: which points diverged, where, and their last eval."""
  diverged = [p for p in fig.points if p.status == "diverged"]
  if not diverged:
    return f"None of the {len(fig.points)} points diverged."
  parts = []
  for p in diverged:
    variant = variant_of(p)
    assert variant is not None  # figure3() holds only points of paper variants
    part = f"{paper.name(variant)} (`{p.name}`) at step {fmt(p.diverged_at)}"
    if p.run is not None and p.run.accuracy:
      last = max(p.run.accuracy)
      part += f", last eval {fmt(p.run.accuracy[last])} at step {last}"
    parts.append(part)
  return "Diverged: " + "; ".join(parts) + "."


def claims(fig: Figure3) -> tuple[str, str, str]:
  """Ours for: (a) BN reaches the baseline's best in a fraction of its steps, (b) BN-x5-Sigmoid
  learns, (c) divergence."""
  return _fewer_claim(fig), _sigmoid_claim(fig), _diverged_claim(fig)


def draw_figure2(fig3: Figure3) -> Figure:
  """Eval accuracy vs step, one line per variant; dashed: Inception's best; o: first step
  at or above it; x: diverged. Writes nothing."""
  fig = plots.figure(9, 5)
  ax = fig.subplots()
  for r in fig3.rows:
    run = r.point.run
    if run is None or not run.accuracy:
      continue
    color = f"C{list(PAPER_VARIANTS).index(r.variant)}"
    steps = sorted(run.accuracy)
    acc = [run.accuracy[s] for s in steps]
    diverged = r.point.diverged_at
    ax.plot(
      steps,
      acc,
      "-",
      color=color,
      marker="." if len(steps) <= 50 else None,
      label=r.name + (f" (diverged at {diverged})" if diverged is not None else ""),
    )
    if r.steps is not None:
      ax.plot([r.steps], [run.accuracy[r.steps]], "o", color=color, mfc="none", markersize=9)
    if diverged is not None:
      ax.plot([steps[-1]], [acc[-1]], "x", color=color, markersize=10, mew=2)
  if fig3.baseline_best is not None:
    best = fig3.baseline_best
    ax.axhline(best, color="gray", ls="--", lw=1, label=f"Inception's best ({best:.4f})")
  ax.set_xlabel("training step")
  ax.set_ylabel("eval accuracy (top-1)")
  ax.set_title("Figure 2: eval accuracy vs training step (o: first at Inception's best)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  return fig


def markdown_file(res: SweepResults, fig: Figure3) -> str:
  """figure3.md: Inception's best, then the table."""
  return "\n".join(
    [
      f"# Figure 3: `{res.spec}`",
      "",
      f"Inception's best eval accuracy: {fmt(fig.baseline_best)}.",
      "",
    ]
    + markdown(fig)
    + [""]
  )
