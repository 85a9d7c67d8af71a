"""Sweeps: resolving points and bad input, and one real tiny sweep run, killed, resumed and
reported through the CLIs in subprocesses (the grid language: test_sweep_grid.py)."""

import csv
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from idx_files import write_mnist_dir

from bn_repro.errors import UserError
from bn_repro.report import aggregate, figure1, results
from bn_repro.report import lr as lr_sensitivity
from bn_repro.report import report as sweep_report
from bn_repro.rundir import FINISHED, RunDir
from bn_repro.sweeps import grid as sw
from bn_repro.sweeps import resolve, runner

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = f"{REPO}/bn_repro/configs/mnist_mlp.py:bn_sigmoid"
TINY = {
  "model.hidden": (8, 8),
  "batch_size": 16,
  "eval_batch_size": 40,
  "num_steps": 8,
  "log_every": 4,
  "eval_every": 4,
  "checkpoint_every": 4,
  "tensorboard": False,
  "num_devices": 1,
  "max_loss": 1e3,
}
DEADLINE_S = 900  # only so that a hang fails instead of blocking; nothing asserts on time


# ---------------------------------------------------------------------------
# Resolving.


def test_presets_resolve_to_named_points():
  sweep, sweep_dir = resolve.load_sweep("mnist_sweeps:lr_grid")
  points = resolve.resolve(sweep, sweep_dir, "runs/lr", {"num_steps": "100"}, cwd=str(REPO))
  assert len(points) == 2 * 2 * 7 * 3 == len({p.name for p in points})
  p = points[0]
  assert p.name == "bn=on,lr=0.01,nonlinearity=sigmoid,seed=0"
  assert p.workdir == os.path.join("runs/lr", p.name)
  assert p.config == "bn_repro/configs/mnist_mlp.py:bn_sigmoid"
  assert p.overrides["max_loss"] == "1000.0" and p.overrides["num_steps"] == "100"
  assert p.resolved["num_steps"] == 100 and p.resolved["optimizer"]["learning_rate"] == 0.01
  lrs = sorted({q.resolved["optimizer"]["learning_rate"] for q in points})
  assert lrs == [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
  assert {(q.resolved["model"]["nonlinearity"], q.resolved["model"]["use_bn"]) for q in points} == {
    ("sigmoid", True),
    ("sigmoid", False),
    ("relu", True),
    ("relu", False),
  }

  sweep, sweep_dir = resolve.load_sweep(str(REPO / "bn_repro/configs/mnist_sweeps.py") + ":figure1")
  points = resolve.resolve(sweep, sweep_dir, "runs/fig1", {}, cwd=str(REPO))
  assert [p.name for p in points] == ["bn=on", "bn=off"]
  assert [p.resolved["model"]["use_bn"] for p in points] == [True, False]


@pytest.mark.parametrize(
  "grid,fixed,overrides,expect",
  [
    ([{"optimizer.lr": 0.1}], {}, {}, "optimizer.lr"),
    ([{"seed": 0}], {"model.widths": (8,)}, {}, "model.widths"),
    ([{"seed": 0}], {}, {"optimizer.lr": "0.1"}, "optimizer.lr"),
    ([{"seed": 0}], {}, {"seed": "1"}, "seed is an axis"),
    ([{"seed": 0}, {"seed": 0}], {}, {}, "same name"),
    ([{"optimizer.learning_rate": 0.0}], {}, {}, "config.optimizer.learning_rate"),
    ([{"num_steps": 0.5}], {}, {}, "num_steps"),
    ([{"model.name": "mlp", "data.name": "mnist"}], {}, {}, "distinct aliases"),
  ],
  ids=[
    "unknown grid field",
    "unknown fixed field",
    "unknown override",
    "override of an axis",
    "duplicate point",
    "invalid value",
    "wrong type",
    "alias clash",
  ],
)
def test_resolve_rejects_bad_sweeps(grid, fixed, overrides, expect):
  sweep = sw.Sweep(base=BASE, grid=grid, fixed=fixed)
  with pytest.raises(UserError, match=expect):
    resolve.resolve(sweep, str(REPO), "runs/x", overrides, cwd=str(REPO))


def test_parallel_children_get_one_xla_thread_each():
  env = runner.child_env(2, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert env["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=8",
    "--xla_cpu_multi_thread_eigen=false",
  ]
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert runner.child_env(1, {"XLA_FLAGS": "--x"}) == {"XLA_FLAGS": "--x"}


# ---------------------------------------------------------------------------
# The CLIs on a real tiny sweep.


def _sweep_file(path: pathlib.Path, grid: str) -> pathlib.Path:
  path.write_text(
    textwrap.dedent(f"""\
      from bn_repro.sweeps import grid as sw

      def get_sweep(name):
        return sw.Sweep(base={BASE!r}, grid={grid}, fixed={TINY!r},
                        aliases={{"model.use_bn": "bn", "optimizer.learning_rate": "lr"}},
                        description="tiny test sweep")
      """)
  )
  return path


def _runner(*args) -> list[str]:
  return [sys.executable, "-m", "bn_repro.sweeps", *args]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
  kwargs.setdefault("env", dict(os.environ))
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S, **kwargs)


def _status(point_dir: pathlib.Path) -> dict:
  try:
    return json.loads((point_dir / "status.json").read_text())
  except (OSError, ValueError):
    return {}


@pytest.mark.slow
def test_unknown_field_in_sweep_file_exits_2_and_writes_nothing(tmp_path):
  spec = _sweep_file(
    tmp_path / "bad.py",
    'sw.product(sw.axis("model.use_bn", (True, False)), sw.axis("optimizer.lr", (0.1,)))',
  )
  workdir = tmp_path / "sweep"
  r = _run(_runner(f"--sweep={spec}:x", f"--workdir={workdir}"))
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "optimizer.lr" in lines[0], r.stderr
  assert not workdir.exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """bn on/off x lr {0.1, 1e9} (the big one diverges) with --parallel=2: run 1 is SIGKILLed
  after its first point finishes, run 2 finishes the sweep, run 3 finds nothing to do."""
  tmp = tmp_path_factory.mktemp("sweep")
  idx = tmp / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  spec = _sweep_file(
    tmp / "tiny_sweeps.py",
    'sw.product(sw.axis("model.use_bn", (True, False)), '
    'sw.axis("optimizer.learning_rate", (0.1, 1e9)))',
  )
  workdir = tmp / "sweep"
  args = [
    f"--sweep={spec}:tiny",
    f"--workdir={workdir}",
    "--parallel=2",
    "--override=data.source=idx",
    f"--override=data.idx_dir={idx}",
  ]
  names = ["bn=on,lr=0.1", "bn=on,lr=1e+09", "bn=off,lr=0.1", "bn=off,lr=1e+09"]

  with open(tmp / "run1.out", "w") as out:
    proc = subprocess.Popen(
      _runner(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)
    )
    deadline = time.monotonic() + DEADLINE_S
    while not any(_status(workdir / n).get("status") in FINISHED for n in names):
      assert proc.poll() is None, (tmp / "run1.out").read_text()
      assert time.monotonic() < deadline, "no point finished"
      time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finished = {
    n: (workdir / n / "status.json").stat().st_mtime_ns
    for n in names
    if _status(workdir / n).get("status") in FINISHED
  }
  run2 = _run(_runner(*args))
  mtimes = {n: (workdir / n / "status.json").stat().st_mtime_ns for n in names}
  run3 = _run(_runner(*args))
  return dict(
    tmp=tmp,
    args=args,
    workdir=workdir,
    names=names,
    spec=spec,
    run1=(tmp / "run1.out").read_text(),
    finished=finished,
    run2=run2,
    mtimes=mtimes,
    run3=run3,
  )


@pytest.mark.slow
def test_sweep_runs_in_parallel_records_divergence_and_survives_sigkill(swept):
  workdir, run2 = swept["workdir"], swept["run2"]
  assert swept["run1"].splitlines()[:2] == [
    "[1/4] bn=on,lr=0.1: started",
    "[2/4] bn=on,lr=1e+09: started",
  ], swept["run1"]
  assert run2.returncode == 0, run2.stdout + run2.stderr
  assert "2 done, 2 diverged, 0 failed" in run2.stdout, run2.stdout
  for name in swept["names"]:
    status = _status(workdir / name)
    if "lr=0.1" in name:
      assert status == {"status": "done", "step": 8}, name
      assert [e["step"] for e in RunDir(workdir / name).metrics() if "eval/accuracy" in e] == [
        0,
        4,
        8,
      ]
    else:
      assert status["status"] == "diverged" and status["step"] >= 1, (name, status)
    assert json.loads((workdir / name / "config.json").read_text())["model"]["hidden"] == [8, 8]
    env = json.loads((workdir / name / "environment.json").read_text())
    assert env["packages"]["jax"] and env["cpu_count"] >= 1
  # Points finished before the kill are skipped, not redone.
  assert swept["finished"]
  for name, mtime in swept["finished"].items():
    assert f"{name}: skipped" in run2.stdout, run2.stdout
    assert swept["mtimes"][name] == mtime
  record = json.loads((workdir / "sweep.json").read_text())
  assert [p["name"] for p in record["points"]] == swept["names"]
  assert record["points"][0]["fields"] == {"model.use_bn": True, "optimizer.learning_rate": 0.1}
  assert "--config.optimizer.learning_rate=0.1" in record["points"][0]["command"]


def test_rerun_skips_finished_points(swept):
  run3, workdir = swept["run3"], swept["workdir"]
  assert run3.returncode == 0, run3.stderr
  assert run3.stdout.count(": skipped (") == 4 and "started" not in run3.stdout, run3.stdout
  for name in swept["names"]:
    assert (workdir / name / "status.json").stat().st_mtime_ns == swept["mtimes"][name]


@pytest.mark.slow
def test_print_commands_prints_one_runnable_command_per_point(swept):
  r = _run(_runner(*swept["args"], "--print_commands"))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 4
  for line, name in zip(lines, swept["names"]):
    assert line.startswith(f"cd {REPO} && ") and f"--point={name}" in line
  one = subprocess.run(
    ["bash", "-c", lines[0]],
    capture_output=True,
    text=True,
    timeout=DEADLINE_S,
    env=dict(os.environ),
  )
  assert one.returncode == 0, one.stderr
  assert one.stdout.splitlines()[0] == "[1/4] bn=on,lr=0.1: skipped (done at step 8)"


@pytest.mark.slow
def test_report_writes_tables_figures_and_report(swept):
  workdir, out = swept["workdir"], swept["tmp"] / "report"
  r = _run(
    [
      sys.executable,
      "scripts/sweep_report.py",
      f"--sweep_dir={workdir}",
      f"--out_dir={out}",
      "--target_accuracy=0.1",
    ]
  )
  assert r.returncode == 0, r.stderr
  for name in (
    "results.csv",
    "results.md",
    "lr_sensitivity.png",
    "figure1.png",
    "figure1a.png",
    "figure1b.png",
    "figure1c.png",
    "figure1.csv",
    "REPORT.md",
  ):
    assert (out / name).stat().st_size > 0, name
  assert (out / "lr_sensitivity.png").read_bytes().startswith(b"\x89PNG")
  assert not (out / "aggregate.csv").exists()  # no seed axis

  rows = {row["name"]: row for row in csv.DictReader(open(out / "results.csv"))}
  assert list(rows) == swept["names"]
  for name, row in rows.items():
    evals = [e for e in RunDir(workdir / name).metrics() if "eval/accuracy" in e]
    accs = [e["eval/accuracy"] for e in evals]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    assert float(row["best_accuracy"]) == accs[best]
    assert int(row["best_step"]) == evals[best]["step"]
    reached = [e["step"] for e in evals if e["eval/accuracy"] >= 0.1]
    assert row["steps_to_target"] == (str(reached[0]) if reached else "")
    if "lr=0.1" in name:
      assert row["status"] == "done" and row["diverged_at"] == ""
      assert float(row["final_accuracy"]) == accs[-1] and row["final_step"] == "8"
    else:
      assert row["status"] == "diverged" and row["final_accuracy"] == ""
      assert int(row["diverged_at"]) == _status(workdir / name)["step"]

  report = (out / "REPORT.md").read_text()
  record = json.loads((workdir / "sweep.json").read_text())
  for needle in (
    "## Paper vs. ours",
    "higher throughout training",
    "![Figure 1](figure1.png)",
    "lr_sensitivity.png",
    "diverged 1/1",
    record["runner_command"],
    "--print_commands",
    "jax 0.10",
    "cpu",
    "Pair: `bn=on,lr=0.1`",
  ):
    assert needle in report, needle
  assert "| bn=off,lr=1e+09 |" in (out / "results.md").read_text()


def test_report_bad_sweep_dir_exits_2_and_writes_nothing(tmp_path):
  out = tmp_path / "out"
  r = _run(
    [
      sys.executable,
      "scripts/sweep_report.py",
      f"--sweep_dir={tmp_path / 'nope'}",
      f"--out_dir={out}",
    ]
  )
  assert r.returncode == 2
  assert len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr
  assert not out.exists()


# ---------------------------------------------------------------------------
# Aggregation over seeds, on a synthetic sweep dir.


@pytest.mark.slow
def test_aggregate_over_seeds_and_lr_lines(tmp_path):
  """bn on/off x lr {0.1, 1} x seeds {0, 1}; bn=off,lr=1,seed=1 diverged at step 30."""
  points = []
  finals = {}
  for use_bn in (True, False):
    for lr in (0.1, 1.0):
      for seed in (0, 1):
        fields = {"model.use_bn": use_bn, "optimizer.learning_rate": lr, "seed": seed}
        name = sw.point_name(fields, {"model.use_bn": "bn", "optimizer.learning_rate": "lr"})
        points.append({"name": name, "fields": fields, "command": f"train {name}"})
        d = tmp_path / name
        d.mkdir()
        diverged = not use_bn and lr == 1.0 and seed == 1
        accs = [0.1, 0.5 + 0.1 * use_bn + 0.01 * seed, 0.6 + 0.1 * use_bn + 0.02 * seed + lr / 10]
        finals[name] = accs[-1]
        with open(d / "metrics.jsonl", "w") as f:
          for step, acc in zip((0, 20, 40), accs[:2] if diverged else accs):
            f.write(
              json.dumps(
                {
                  "step": step,
                  "eval/accuracy": acc,
                  "probe/p15": -1.0,
                  "probe/p50": 0.0,
                  "probe/p85": 1.0,
                }
              )
              + "\n"
            )
        (d / "status.json").write_text(
          json.dumps(
            {"status": "diverged", "step": 30} if diverged else {"status": "done", "step": 40}
          )
        )
        (d / "config.json").write_text(
          json.dumps(
            {
              "seed": seed,
              "model": {"use_bn": use_bn, "nonlinearity": "sigmoid"},
              "optimizer": {"learning_rate": lr},
            }
          )
        )
  (tmp_path / "sweep.json").write_text(
    json.dumps(
      {
        "sweep": "synthetic:x",
        "points": points,
        "runner_command": "run it",
        "cwd": "/",
        "aliases": {"model.use_bn": "bn", "optimizer.learning_rate": "lr"},
      }
    )
  )

  res = results.load_sweep(str(tmp_path), 0.65)
  groups = aggregate.group_points(res, drop=("seed",))
  assert len(groups) == 4
  a = aggregate.aggregate(groups[0])  # bn=on, lr=0.1
  mean = (finals["bn=on,lr=0.1,seed=0"] + finals["bn=on,lr=0.1,seed=1"]) / 2
  assert a["n"] == 2 and a["done"] == 2 and math.isclose(a["final_accuracy_mean"], mean)
  assert math.isclose(a["final_accuracy_std"], 0.02 / math.sqrt(2))
  a = aggregate.aggregate(groups[3])  # bn=off, lr=1: one seed diverged
  assert (a["done"], a["diverged"]) == (1, 1)
  assert a["final_accuracy_mean"] == finals["bn=off,lr=1,seed=0"]
  assert a["final_accuracy_std"] is None
  assert a["reached_target"] == 1 and a["steps_to_target_mean"] == 40

  lines = lr_sensitivity.lines(res)
  assert [(line.label, line.lrs) for line in lines] == [("BN", [0.1, 1.0]), ("no BN", [0.1, 1.0])]
  pair = figure1.pair(res, 0.5)
  assert [p.name for p in pair] == ["bn=on,lr=1,seed=0", "bn=off,lr=1,seed=0"]

  written = sweep_report.write_all(res, str(tmp_path), 0.65, 0.5, "report it")
  names = {os.path.basename(w) for w in written}
  assert {"aggregate.csv", "lr_sensitivity.png", "figure1.png", "REPORT.md"} <= names
  agg = list(csv.DictReader(open(tmp_path / "aggregate.csv")))
  assert [(r["bn"], r["lr"], r["n"], r["diverged"]) for r in agg] == [
    ("True", "0.1", "2", "0"),
    ("True", "1.0", "2", "0"),
    ("False", "0.1", "2", "0"),
    ("False", "1.0", "2", "1"),
  ]
  text = (tmp_path / "REPORT.md").read_text()
  assert "Over seeds" in text and "(diverged 1/2)" in text and "run it" in text
