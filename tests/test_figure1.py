"""bn_repro.report.figure1 and its CLI, scripts/figure1.py, on synthetic run dirs."""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from bn_repro.errors import UserError
from bn_repro.report import figure1, results, seeds

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "figure1.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = (
  "figure1.png",
  "figure1a.png",
  "figure1b.png",
  "figure1c.png",
  "figure1.csv",
  "figure1.md",
)

# Eval values per step. BN: steps 0..300; no BN: 0, 100, 200, 400 with "nan"
# accuracy and p50 at step 200 (as the trainer writes non-finite values).
BN_EVAL = {
  0: dict(acc=0.5, p15=-1.0, p50=0.0, p85=1.0),
  100: dict(acc=0.8, p15=-1.1, p50=0.1, p85=1.3),
  200: dict(acc=0.9, p15=-0.9, p50=-0.1, p85=0.9),
  300: dict(acc=0.95, p15=-1.0, p50=0.0, p85=1.0),
}
NOBN_EVAL = {
  0: dict(acc=0.5, p15=-1.0, p50=0.0, p85=1.0),
  100: dict(acc=0.6, p15=0.0, p50=1.0, p85=2.0),
  200: dict(acc="nan", p15=1.0, p50="nan", p85=3.0),
  400: dict(acc=0.7, p15=2.0, p50=3.0, p85=5.0),
}
# Hand computation: BN widths p85 - p15 = 2, 2.4, 1.8, 2 (mean 2.05);
# ranges p15 0.2, p50 0.2, p85 0.4. No BN uses steps 0, 100, 400 only (p50 is
# NaN at 200): widths 2, 2, 3 (mean 7/3); ranges p15 3, p50 3, p85 4.
BN_DRIFT = {"p15": 0.2 / 2.05, "p50": 0.2 / 2.05, "p85": 0.4 / 2.05}
NOBN_DRIFT = {"p15": 9 / 7, "p50": 9 / 7, "p85": 12 / 7}


def _write_run(
  run_dir: pathlib.Path, evals: dict, config: dict | None = None, with_evals: bool = True
) -> pathlib.Path:
  """Writes metrics.jsonl with train events interleaved between eval events."""
  run_dir.mkdir(parents=True)
  lines = []
  for step, v in evals.items():
    lines.append(
      {"step": step, "train/loss": 2.0 - step / 1000, "train/accuracy": 0.4, "steps_per_sec": 123.0}
    )
    if with_evals:
      lines.append(
        {
          "step": step,
          "eval/accuracy": v["acc"],
          "eval/loss": 1.0,
          "probe/p15": v["p15"],
          "probe/p50": v["p50"],
          "probe/p85": v["p85"],
        }
      )
    lines.append({"step": step + 50, "train/loss": 1.0, "steps_per_sec": 99.0})
  with open(run_dir / "metrics.jsonl", "w") as f:
    for e in lines:
      f.write(json.dumps(e) + "\n")
  if config is not None:
    with open(run_dir / "config.json", "w") as f:
      json.dump(config, f)
  return run_dir


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  bn = _write_run(
    root / "bn",
    BN_EVAL,
    config={"model": {"use_bn": True, "nonlinearity": "sigmoid", "probe_unit": 7}},
  )
  nobn = _write_run(root / "nobn", NOBN_EVAL)  # No config.json: load_run reads it all the same.
  return bn, nobn


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
  )


@pytest.fixture(scope="module")
def cli_out(run_dirs, tmp_path_factory):
  bn, _ = run_dirs
  # The CLI tells BN from no BN by config.json.
  nobn = _write_run(
    tmp_path_factory.mktemp("cfg") / "nobn", NOBN_EVAL, {"model": {"use_bn": False}}
  )
  out = tmp_path_factory.mktemp("out") / "nested" / "fig"  # Created by script.
  proc = _run_cli(f"--bn={bn}", f"--nobn={nobn}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  return out, proc


def _num(cell: str) -> float | None:
  return None if cell == "" else float(cell)


def test_cli_writes_all_outputs(cli_out):
  out, _ = cli_out
  assert sorted(os.listdir(out)) == sorted(OUTPUTS)
  for name in OUTPUTS:
    if name.endswith(".png"):
      data = (out / name).read_bytes()
      assert data.startswith(PNG_MAGIC), name
      assert len(data) > 5000, name


def test_cli_csv_rows_and_values(cli_out):
  out, _ = cli_out
  with open(out / "figure1.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == [
    "step",
    "bn_accuracy",
    "nobn_accuracy",
    "bn_p15",
    "bn_p50",
    "bn_p85",
    "nobn_p15",
    "nobn_p50",
    "nobn_p85",
  ]
  # Eval steps of either run only; train-only steps (50, 150, ...) excluded.
  assert [int(r[0]) for r in rows[1:]] == [0, 100, 200, 300, 400]
  by_step = {int(r[0]): r for r in rows[1:]}
  for step in (0, 100, 200, 300, 400):
    row = by_step[step]
    for prefix, evals in (("bn", BN_EVAL), ("nobn", NOBN_EVAL)):
      for key in ("accuracy", "p15", "p50", "p85"):
        cell = row[rows[0].index(f"{prefix}_{key}")]
        if step not in evals:
          assert cell == "", (step, prefix, key)
          continue
        want = evals[step]["acc" if key == "accuracy" else key]
        if want == "nan":
          assert math.isnan(_num(cell)), (step, prefix, key)
        else:
          assert _num(cell) == pytest.approx(want), (step, prefix, key)


def test_cli_markdown_and_stdout_summary(cli_out):
  out, proc = cli_out
  md = (out / "figure1.md").read_text()
  # All 5 eval steps are listed (<= 25); "—" where a run has no value.
  assert "| 300 | 0.9500 | — |" in md
  assert "| 400 | — | 0.7000 |" in md
  assert "| 200 | 0.9000 | nan |" in md
  bn_row = next(l for l in md.splitlines() if l.startswith("| with BN"))
  nobn_row = next(l for l in md.splitlines() if l.startswith("| without BN"))
  # final accuracy, its step, best accuracy, its step, drift p15, p50, p85.
  assert bn_row.split("|")[2:9] == [
    " 0.9500 ",
    " 300 ",
    " 0.9500 ",
    " 300 ",
    f" {BN_DRIFT['p15']:.3f} ",
    f" {BN_DRIFT['p50']:.3f} ",
    f" {BN_DRIFT['p85']:.3f} ",
  ]
  assert nobn_row.split("|")[2:9] == [
    " 0.7000 ",
    " 400 ",
    " 0.7000 ",
    " 400 ",
    f" {NOBN_DRIFT['p15']:.3f} ",
    f" {NOBN_DRIFT['p50']:.3f} ",
    f" {NOBN_DRIFT['p85']:.3f} ",
  ]
  assert "with BN (sigmoid)" in bn_row  # Label from config.json.
  assert "Drift of a percentile =" in md
  assert bn_row in proc.stdout and nobn_row in proc.stdout


def test_drift_matches_hand_computation():
  got = figure1.drift([-1.0, -1.1, -0.9, -1.0], [0.0, 0.1, -0.1, 0.0], [1.0, 1.3, 0.9, 1.0])
  assert got == pytest.approx(BN_DRIFT)
  # Steps with any non-finite percentile are dropped.
  got = figure1.drift([-1, 0, 1, 2], [0, 1, math.nan, 3], [1, 2, 3, 5])
  assert got == pytest.approx(NOBN_DRIFT)
  got = figure1.drift([0.0, 0.0], [0.0, 1.0], [0.0, 0.0])  # Zero width.
  assert all(math.isnan(v) for v in got.values())


def test_load_run(run_dirs):
  bn, nobn = run_dirs
  run = results.load_run(str(nobn))
  assert run.steps == [0, 100, 200, 400]
  assert math.isnan(run.accuracy[200]) and math.isnan(run.p50[200])
  assert run.p85 == {0: 1.0, 100: 2.0, 200: 3.0, 400: 5.0}
  assert run.use_bn is None and run.probe_unit is None
  assert figure1.run_drift(run) == pytest.approx(NOBN_DRIFT)
  run = results.load_run(str(bn), max_step=150)
  assert run.steps == [0, 100]
  assert run.accuracy == {0: 0.5, 100: 0.8}
  assert (run.use_bn, run.nonlinearity, run.probe_unit) == (True, "sigmoid", 7)


def test_make_table_log_spaced_subset():
  steps = list(range(0, 50_001, 500))  # 101 eval steps.
  acc = {s: s / 50_000 for s in steps}
  pct = {s: 0.0 for s in steps}
  run = results.Run(path="r", steps=steps, accuracy=acc, p15=pct, p50=pct, p85=pct)
  md = figure1.make_table(run, run)
  table = md.split("## Summary")[0]
  rows = [
    int(l.split("|")[1])
    for l in table.splitlines()
    if l.startswith("| ") and l.split("|")[1].strip().isdigit()
  ]
  assert rows[0] == 0 and rows[-1] == 50_000
  assert 18 <= len(rows) <= 22
  assert rows == sorted(set(rows))
  gaps = [b - a for a, b in zip(rows, rows[1:])]
  assert gaps[0] == 500 and gaps[-1] > 5000  # Dense early, sparse late.
  assert "| 50000 | 1.0000 | 1.0000 |" in md


def _tree(root: pathlib.Path) -> dict[str, int]:
  return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_draw_returns_figures_and_writes_nothing(run_dirs, tmp_path, monkeypatch):
  bn, nobn = (results.load_run(str(d)) for d in run_dirs)
  before = [_tree(d) for d in run_dirs]
  monkeypatch.chdir(tmp_path)
  fig = figure1.draw(bn, nobn)
  assert isinstance(fig, Figure)
  assert [ax.get_title() for ax in fig.axes] == [
    "(a) Test accuracy",
    # No probe_network in these configs: probe/* measured the inference network.
    "(b) Without BN: input to sigmoid\nlast hidden layer, inference network",
    "(c) With BN: input to sigmoid #7\nlast hidden layer, inference network (population "
    "statistics)",
  ]
  for panel, title in zip(figure1.PANELS, [ax.get_title() for ax in fig.axes]):
    one = figure1.draw_panel(bn, nobn, panel)
    assert isinstance(one, Figure) and [ax.get_title() for ax in one.axes] == [title]
  with pytest.raises(ValueError, match="panels a, b, c"):
    figure1.draw_panel(bn, nobn, "d")
  assert os.listdir(tmp_path) == []
  assert [_tree(d) for d in run_dirs] == before


def test_write_writes_the_outputs_without_pyplot(run_dirs, tmp_path):
  """In a fresh interpreter, `write` returns the paths of exactly OUTPUTS and never imports
  pyplot (so a notebook's pyplot state is left alone)."""
  bn, nobn = run_dirs
  code = (
    "import sys\n"
    "from bn_repro.report import figure1, results\n"
    f"bn, nobn = results.load_run({str(bn)!r}), results.load_run({str(nobn)!r})\n"
    f"print('\\n'.join(figure1.write(bn, nobn, {str(tmp_path)!r})))\n"
    "assert 'matplotlib.pyplot' not in sys.modules\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [str(tmp_path / name) for name in OUTPUTS]
  assert sorted(os.listdir(tmp_path)) == sorted(OUTPUTS)


def test_cli_missing_run_dir_exits_2_and_writes_nothing(run_dirs, tmp_path):
  bn, _ = run_dirs
  bad = tmp_path / "no_such_run"
  out = tmp_path / "out"
  proc = _run_cli(f"--bn={bn}", f"--nobn={bad}", f"--out={out}")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"figure1: error: --nobn={bad}:") and "does not exist" in lines[0]
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""
  assert not out.exists()


@pytest.mark.parametrize(
  "case", ["missing_dir", "missing_metrics", "no_eval_events", "none_below_max_step"]
)
def test_load_run_bad_input_raises_user_error(run_dirs, tmp_path, case):
  bad = tmp_path / "bad"
  max_step = None
  if case == "missing_metrics":
    bad.mkdir()
  elif case == "no_eval_events":
    _write_run(bad, NOBN_EVAL, with_evals=False)
  elif case == "none_below_max_step":
    bad, max_step = run_dirs[0], -1
  with pytest.raises(UserError, match=re.escape(str(bad))):
    results.load_run(str(bad), max_step=max_step)


@pytest.mark.slow
def test_figure1_sh_parallel_equals_sequential(tmp_path):
  """scripts/figure1.sh end to end on tiny runs of 2 seeds: the default (both nets at once)
  and FIGURE1_SEQUENTIAL=1 (one after the other), each net pinned to one CPU in both, write
  the same figure1.csv."""
  from idx_files import write_mnist_dir

  (tmp_path / "idx").mkdir()
  idx = write_mnist_dir(tmp_path / "idx", train=120, test=30)
  flags = [
    "--config.data.source=idx",
    f"--config.data.idx_dir={idx}",
    "--config.num_devices=1",
    "--config.num_steps=20",
    "--config.eval_every=10",
    "--config.log_every=10",
    "--config.checkpoint_every=20",
    "--config.tensorboard=false",
  ]
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  csvs = []
  for mode in ("0", "1"):
    out = tmp_path / f"out{mode}"
    proc = subprocess.run(
      [str(REPO_ROOT / "scripts" / "figure1.sh"), str(out)] + flags,
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(env, FIGURE1_SEQUENTIAL=mode, FIGURE1_SEEDS="2"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in OUTPUTS:
      assert (out / name).exists(), name
    for run in ("bn/seed0", "bn/seed1", "nobn/seed0", "nobn/seed1"):
      assert json.loads((out / run / "status.json").read_text())["status"] == "done"
    runs = [l.split(": ", 1)[0] for l in proc.stdout.splitlines() if " batched runs on " in l]
    assert sorted(runs) == ["bn", "nobn"]  # each run's lines start with its name
    csvs.append((out / "figure1.csv").read_text())
  assert csvs[0] == csvs[1]
  assert len(csvs[0].splitlines()) == 4  # header + steps 0, 10, 20


def test_cli_refuses_swapped_runs_in_one_line(run_dirs, tmp_path):
  bn, _ = run_dirs
  nobn = _write_run(tmp_path / "nobn", NOBN_EVAL, {"model": {"use_bn": False}})
  out = tmp_path / "out"
  proc = _run_cli(f"--bn={nobn}", f"--nobn={bn}", f"--out={out}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f"figure1: error: the runs are swapped: {nobn} has model.use_bn=False and {bn} "
    "model.use_bn=True; exchange --bn and --nobn"
  ]
  assert not out.exists()


def _seed_run(path, seed, acc, p15, p85, use_bn=True):
  """A run of eval steps 0, 250, ..., with the given accuracies and percentiles."""
  evals = {
    250 * i: dict(acc=a, p15=lo, p50=(lo + hi) / 2, p85=hi)
    for i, (a, lo, hi) in enumerate(zip(acc, p15, p85))
  }
  return _write_run(path, evals, {"seed": seed, "model": {"use_bn": use_bn}})


def test_seeds_band_growth_and_targets(tmp_path):
  """A directory of seed runs: mean and min-max accuracy, the band's ratios to its value at
  the first eval after step 0, and the three targets, against hand computation."""
  bn_acc = [[0.1, 0.9, 0.92, 0.95, 0.96], [0.1, 0.85, 0.9, 0.94, 0.95]]
  nobn_acc = [[0.1, 0.3, 0.5, 0.6, 0.6], [0.1, 0.2, 0.55, 0.62, 0.62]]
  for seed in (1, 0):  # written out of order: runs are sorted by their configs' seed
    _seed_run(
      tmp_path / "bn" / f"s{seed}",
      seed,
      bn_acc[seed],
      [-1, -1, -1.1, -1.2, -0.9],
      [1, 1, 1.1, 1.2, 1.3],
    )
    _seed_run(
      tmp_path / "nobn" / f"s{seed}",
      seed,
      nobn_acc[seed],
      [0, -0.1, -0.5, -1, -2],
      [0, 0.1, 0.5, 1, 2],
      use_bn=False,
    )
  bn, nobn = seeds.load_net(str(tmp_path / "bn")), seeds.load_net(str(tmp_path / "nobn"))
  assert [r.seed for r in bn] == [0, 1]
  steps, mean, lo, hi = seeds.accuracy_band(bn)
  np.testing.assert_allclose(mean, np.mean(bn_acc, 0))
  np.testing.assert_allclose(lo, np.min(bn_acc, 0))
  np.testing.assert_allclose(hi, np.max(bn_acc, 0))
  # BN bands 2, 2.2, 2.4, 2.2 from step 250: ratios 1 .. 1.2; no BN 0.2, 1, 2, 4: 1 .. 20.
  first, ratios = seeds.band_ratios(bn[0])
  assert first == pytest.approx(2.0) and ratios == pytest.approx([1, 1.1, 1.2, 1.1])
  assert seeds.band_ratios(nobn[0])[1] == pytest.approx([1, 5, 10, 20])
  (lead, _, b_lead), (band, _, b_band), (growth, shown, b_growth) = seeds.targets(bn, nobn)
  # Leads at 250: 0.6 and 0.65; minimum over 250..1,000: 0.35 and 0.32 (both at 750).
  assert b_lead is True and b_band is True and b_growth is True
  assert "20.00, with BN 1.20: 16.67×" in shown
  nobn[1].accuracy[750] = 0.7  # seed 1's lead at 750 drops to 0.24
  assert seeds.targets(bn, nobn)[0][2] is False
