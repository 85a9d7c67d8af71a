"""A sweep's report: REPORT.md (the paper's claims next to ours) and the files beside it.

`write_all` writes into one directory:
  results.csv, results.md  one row per point (bn_repro.report.aggregate); results.md also
                           aggregates over seeds when the sweep has a seed axis
  aggregate.csv            that aggregate (only with a seed axis)
  lr_sensitivity.png       final accuracy vs learning rate (bn_repro.report.lr), when the
                           learning rate varies
  figure1.png, figure1{a,b,c}.png, figure1.csv, figure1.md
                           Figure 1 (bn_repro.report.figure1) for a BN / no-BN sigmoid pair
                           whose configs differ only in model.use_bn
  figure2.png, figure3.csv, figure3.md
                           Figures 2 and 3 (bn_repro.report.figure3) when the points are the
                           paper's Inception variants
  REPORT.md                the paper's claim next to ours for each figure and table, the
                           exact commands, and the software and hardware the points ran on
"""

import csv
import dataclasses
import datetime
import json
import os
from collections.abc import Sequence

from bn_repro.report import aggregate, figure1, figure3, lr, paper, plots
from bn_repro.report.paper import CLAIMS
from bn_repro.report.results import (
  BN_FIELD,
  NONLINEARITY_FIELD,
  SEED_FIELD,
  PointResult,
  SweepResults,
)
from bn_repro.report.tables import md_table
from bn_repro.rundir import RunDir


@dataclasses.dataclass
class Analysis:
  """What a sweep's report shows: each part is empty or None where the sweep has none."""

  res: SweepResults
  target: float  # the eval accuracy whose first step is reported
  groups: list[aggregate.Group]  # the points grouped over seeds
  lines: list[lr.LrLine]  # learning-rate sensitivity
  pair: tuple[PointResult, PointResult] | None  # Figure 1's BN / no-BN pair
  fig3: figure3.Figure3 | None  # Figures 2 and 3

  @property
  def seeds(self) -> bool:
    return aggregate.has_seeds(self.res)


def analyze(res: SweepResults, target: float, lr_hint: float) -> Analysis:
  """The parts of a report; Figure 1's pair is the one with the learning rate nearest
  `lr_hint` (figure1.pair)."""
  return Analysis(
    res=res,
    target=target,
    groups=aggregate.group_points(res, drop=(SEED_FIELD,)),
    lines=lr.lines(res),
    pair=figure1.pair(res, lr_hint),
    fig3=figure3.figure3(res),
  )


# The sweep that measures each claim (REPORT.md's "not measured" rows).
MEASURED_BY = {
  "fig1a": "mnist_sweeps:figure1",
  "fig1bc": "mnist_sweeps:figure1",
  "higher_lr": "mnist_sweeps:lr_grid",
  "sigmoid": "mnist_sweeps:lr_grid",
  "fig3_fewer": "inception_sweeps:small_five",
  "fig3_sigmoid": "inception_sweeps:small_five",
  "fig3_trains": "inception_sweeps:small_five",
}
TOPICS = {
  "fig1a": "Figure 1(a)",
  "fig1bc": "Figure 1(b, c)",
  "higher_lr": "Learning rate",
  "sigmoid": "Saturating nonlinearity",
  "fig3_fewer": "Figure 3: steps to Inception's best",
  "fig3_sigmoid": "Figure 3: BN-x5-Sigmoid",
  "fig3_trains": "Figure 2: the five variants train",
}


def measured_claims(a: Analysis) -> dict[str, str]:
  """Ours for each claim whose configurations this sweep holds (and has run)."""
  ours: dict[str, str] = {}
  if a.pair is not None:
    ours["fig1a"], ours["fig1bc"] = figure1.claims(*a.pair)
  ran = [line for line in a.lines if any(p.run is not None for g in line.groups for p in g.points)]
  if ran:
    higher, sigmoid = lr.claims(a.lines, a.target)
    bn = {line.fields.get(BN_FIELD, True) for line in ran}
    if bn == {True, False}:
      ours["higher_lr"] = higher
    sig = {
      line.fields.get(BN_FIELD, True)
      for line in ran
      if line.groups[0].points[0].value(NONLINEARITY_FIELD) == "sigmoid"
    }
    if sig == {True, False}:
      ours["sigmoid"] = sigmoid
  if a.fig3 is not None:
    fewer, sigmoid, trains = figure3.claims(a.fig3)
    ours["fig3_fewer"], ours["fig3_trains"] = fewer, trains
    if a.fig3.row("bn_x5_sigmoid") is not None:
      ours["fig3_sigmoid"] = sigmoid
  return ours


def _claims(a: Analysis) -> list[str]:
  ours = measured_claims(a)
  rows = [[TOPICS[k], paper.claim(k), ours[k]] for k in TOPICS if k in ours]
  out = ["## Paper vs. ours", ""]
  if rows:
    out += md_table(["", "paper (Ioffe & Szegedy, 2015)", "ours (this sweep)"], rows) + [""]
  if "fig1a" in ours:
    out += [f"For orientation ({paper.MNIST_REPRODUCTIONS}).", ""]
  missing = [k for k in TOPICS if k not in ours]
  if missing:
    out += [
      "Not measured by this sweep (it lacks the configurations, or none of them has run):",
      "",
    ] + [f"- {TOPICS[k]}: measured by `--sweep={MEASURED_BY[k]}`." for k in missing]
    out.append(
      f"- {paper.CLAIMS['fig3_diverged']} ({paper.WHERE['fig3_diverged']}): no sweep holds "
      "Inception at BN-x5's learning rate; `bn-repro --config=inception_small:inception "
      "--config.optimizer.learning_rate=LR` with BN-x5's LR measures it."
    )
  return out + [""]


def _figure1_section(a: Analysis) -> list[str]:
  if a.pair is None:
    return []
  bn, nobn = a.pair
  assert bn.run is not None and nobn.run is not None  # pair() pairs only points with a run
  return [
    "## Figure 1",
    "",
    f"Pair: `{bn.name}` (BN) and `{nobn.name}` (no BN).",
    "",
    "![Figure 1](figure1.png)",
    "",
    figure1.summary_table(bn.run, nobn.run),
    "Every eval step: [figure1.csv](figure1.csv), [figure1.md](figure1.md).",
    "",
  ]


def _figure3_section(a: Analysis) -> list[str]:
  if a.fig3 is None:
    return []
  out = [
    "## Figures 2 and 3",
    "",
    CLAIMS["fig2"],
    "",
    "![Figure 2](figure2.png)",
    "",
    "Figure 3 (ours next to the paper's):",
    "",
  ]
  out += figure3.markdown(a.fig3) + ["", "As CSV: [figure3.csv](figure3.csv).", ""]
  used = {r.point.name for r in a.fig3.rows}
  extra = [p.name for p in a.fig3.points if p.name not in used]
  if extra:
    out += [
      "Not in the table (a variant's first point in sweep order is used): "
      + ", ".join(f"`{n}`" for n in extra)
      + ".",
      "",
    ]
  return out


def _lr_section(a: Analysis) -> list[str]:
  if not a.lines:
    return []
  return (
    [
      "## Learning-rate sensitivity",
      "",
      "![lr sensitivity](lr_sensitivity.png)",
      "",
      "Final eval accuracy of finished points, mean ± std over seeds; diverged points "
      "(NaN/Inf or a loss above `max_loss`) have no final accuracy and are counted.",
      "",
    ]
    + lr.markdown(a.lines)
    + [""]
  )


def _results_section(a: Analysis) -> list[str]:
  out = ["## Results", ""]
  if a.seeds:
    out += ["Over seeds:", ""] + aggregate.aggregate_markdown(a.res, a.groups, a.target) + [""]
  out += ["Per point: [results.md](results.md), [results.csv](results.csv).", ""]
  failed = [p for p in a.res.points if p.status == "failed"]
  if failed:
    out += ["Failed points:", ""] + [f"- `{p.name}`: {p.error}" for p in failed] + [""]
  return out


def _commands_section(res: SweepResults, report_command: str) -> list[str]:
  runner = res.record.get("runner_command", "(not recorded)")
  return [
    "## Commands",
    "",
    f"In `{res.record.get('cwd', '?')}`:",
    "",
    "```sh",
    runner,
    report_command,
    "```",
    "",
    f"The runner's command with `--print_commands` lists the command of each of the "
    f"{len(res.points)} points (for a cluster's job array).",
    "",
  ]


def environment_lines(res: SweepResults) -> list[str]:
  """The software and hardware the points ran on, one item per distinct environment."""
  envs: dict[str, list[str]] = {}
  for p in res.points:
    if p.environment is not None:
      envs.setdefault(json.dumps(p.environment, sort_keys=True), []).append(p.name)
  if not envs:
    return [
      f"Not recorded (no point has {RunDir.ENVIRONMENT}; points run by "
      "`python -m bn_repro.sweeps` record it)."
    ]
  out = []
  for text, names in envs.items():
    e = json.loads(text)
    if "error" in e:
      out.append(f"- {len(names)} point(s): probe failed: {e['error']}")
      continue
    pk = e.get("packages", {})
    software = ", ".join(f"{k} {v}" for k, v in [("python", e.get("python"))] + sorted(pk.items()))
    out += [
      f"- {len(names)} point(s) ran with: {software}",
      f"  - hardware: {e.get('cpu')}, {e.get('cpu_count')} CPUs "
      f"({e.get('cpus_usable')} usable), {e.get('memory_gib')} GiB; jax devices: "
      f"{e.get('devices')} (backend {e.get('backend')}); {e.get('platform')}",
      f"  - XLA_FLAGS: `{e.get('xla_flags') or ''}`",
    ]
  return out


def make_report(a: Analysis, written: Sequence[str], report_command: str) -> str:
  """The text of REPORT.md; `written` are the files beside it (linked at the end)."""
  res = a.res
  counts: dict[str, int] = {}
  for p in res.points:
    counts[p.status] = counts.get(p.status, 0) + 1
  out = [f"# Sweep report: `{res.spec}`", ""]
  if res.description:
    out += [res.description + ".", ""]
  ran, total = len(res.points) - counts.get("pending", 0), len(res.points)
  partial = f"a partial sweep: {ran} of {total} points ran" if ran < total else ""
  out += [
    (f"**{partial}**; every number below is over those points only. " if partial else "")
    + f"{len(res.points)} points: "
    + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    + f". Written {datetime.datetime.now().isoformat(timespec='seconds')}.",
    "",
  ]
  out += _claims(a) + _figure1_section(a) + _figure3_section(a) + _lr_section(a)
  out += _results_section(a) + _commands_section(res, report_command)
  out += ["## Software and hardware", ""] + environment_lines(res) + [""]
  names = [os.path.basename(w) for w in written]
  out += ["Files: " + ", ".join(f"[{n}]({n})" for n in names), ""]
  return "\n".join(out)


def _write_csv(path: str, rows: Sequence[Sequence[str]]) -> str:
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return path


def _write_text(path: str, text: str) -> str:
  with open(path, "w") as f:
    f.write(text)
  return path


def write_all(
  res: SweepResults, out: str, target: float, lr_hint: float, report_command: str
) -> list[str]:
  """Writes every output into `out` (which exists); returns their paths, REPORT.md last."""
  a = analyze(res, target, lr_hint)
  path = lambda name: os.path.join(out, name)
  written = [_write_csv(path("results.csv"), aggregate.point_rows(res))]
  if a.seeds:
    written.append(_write_csv(path("aggregate.csv"), aggregate.aggregate_rows(res, a.groups)))
  written.append(_write_text(path("results.md"), aggregate.results_markdown(res, target)))
  if a.lines:
    written.append(plots.save(lr.plot(a.lines), path("lr_sensitivity.png")))
  if a.pair is not None:
    bn, nobn = a.pair
    assert bn.run is not None and nobn.run is not None  # pair() pairs only points with a run
    written += figure1.write(bn.run, nobn.run, out)
  if a.fig3 is not None:
    written.append(plots.save(figure3.draw_figure2(a.fig3), path("figure2.png")))
    written.append(_write_csv(path("figure3.csv"), figure3.csv_rows(a.fig3)))
    written.append(_write_text(path("figure3.md"), figure3.markdown_file(res, a.fig3)))
  written.append(path("REPORT.md"))
  _write_text(written[-1], make_report(a, written, report_command))
  return written
