"""Faults for real: SIGKILL and SIGTERM mid-run, divergence, locks, broken checkpoints."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from idx_files import write_mnist_dir

from bn_repro.metrics import tensorboard_scalars
from bn_repro.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 1200


@pytest.fixture(scope="module")
def idx(tmp_path_factory) -> pathlib.Path:
  return write_mnist_dir(tmp_path_factory.mktemp("idx"), train=200, test=40)


def command(workdir, idx_dir, *extra, hidden="(16, 16)"):
  return [
    sys.executable,
    "-m",
    "bn_repro.main",
    "--config=mnist_mlp:bn_sigmoid",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.idx_dir={idx_dir}",
    f"--config.model.hidden={hidden}",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    "--config.optimizer.momentum=0.9",
    "--config.optimizer.learning_rate=0.05",
    f"--config.num_steps={STEPS}",
    "--config.log_every=100",
    "--config.eval_every=100",
    "--config.checkpoint_every=100",
    "--config.tensorboard=False",
    "--config.num_devices=8",  # conftest's 8 CPU devices (the MLP alone would take one)
    *extra,
  ]


def run(workdir, idx_dir, *extra, **kw):
  return subprocess.run(
    command(workdir, idx_dir, *extra, **kw), cwd=REPO, capture_output=True, text=True, timeout=600
  )


def start(workdir, idx_dir, *extra):
  return subprocess.Popen(
    command(workdir, idx_dir, *extra),
    cwd=REPO,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )


def wait_for(path: pathlib.Path, proc: subprocess.Popen) -> None:
  """Polls until `path` exists (the run reached that point) or the process ends."""
  while not path.exists():
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.02)


def final_state(workdir) -> dict:
  mgr = ocp.CheckpointManager(
    os.path.abspath(workdir / "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
  )
  assert mgr.latest_step() == STEPS
  return mgr.restore(STEPS)


def comparable_metrics(workdir):
  skip = {"steps_per_sec", "compile_seconds"}
  return [{k: v for k, v in e.items() if k not in skip} for e in RunDir(workdir).metrics()]


TENSORBOARD = "--config.tensorboard=True"


def comparable_board(workdir):
  """TensorBoard's scalars but the timings, tag by tag: [(step, value), ...]."""
  scalars = tensorboard_scalars(workdir / RunDir.TENSORBOARD)
  return {k: v for k, v in scalars.items() if k not in ("steps_per_sec", "compile_seconds")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, idx):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  r = run(workdir, idx, TENSORBOARD)
  assert r.returncode == 0, r.stderr
  return workdir


@pytest.mark.parametrize(
  "kill_after,sig", [(100, signal.SIGKILL), (700, signal.SIGKILL), (300, signal.SIGTERM)]
)
@pytest.mark.slow
def test_killed_run_resumes_bit_identical(tmp_path, idx, straight, kill_after, sig):
  """Params, batch_stats, optimizer state, metrics and TensorBoard's scalars equal an
  uninterrupted run's."""
  workdir = tmp_path / "run"
  proc = start(workdir, idx, TENSORBOARD)
  wait_for(workdir / "checkpoints" / str(kill_after), proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=600)
  status = json.loads((workdir / "status.json").read_text())
  if sig == signal.SIGTERM:
    assert proc.returncode == 4, err
    assert "rerun the same command to resume" in err.strip().splitlines()[-1]
    assert status["status"] == "stopped"
    assert (workdir / "checkpoints" / str(status["step"])).exists()
  else:
    assert proc.returncode == -signal.SIGKILL
    assert status["status"] == "running"
  # Flushed at the checkpoint: TensorBoard holds every eval up to it.
  evals = [s for s, _ in comparable_board(workdir)["eval/accuracy"]]
  assert evals[: kill_after // 100 + 1] == list(range(0, kill_after + 1, 100)), evals
  r = run(workdir, idx, TENSORBOARD)
  assert r.returncode == 0, r.stderr
  assert not (workdir / RunDir.LOCK).exists()

  want, got = final_state(straight), final_state(workdir)
  for key in ("params", "batch_stats", "opt_state"):
    flat_want = jax_leaves(want[key])
    flat_got = jax_leaves(got[key])
    assert len(flat_want) == len(flat_got) > 0
    for a, b in zip(flat_want, flat_got):
      np.testing.assert_array_equal(b, a)
  assert comparable_metrics(workdir) == comparable_metrics(straight)
  assert comparable_board(workdir) == comparable_board(straight)
  assert len(comparable_board(straight)["eval/accuracy"]) == STEPS // 100 + 1


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_second_run_in_the_same_workdir_is_refused(tmp_path, idx):
  workdir = tmp_path / "run"
  endless = "--config.num_steps=100000000"
  first = start(workdir, idx, endless)
  try:
    wait_for(workdir / "checkpoints" / "100", first)
    r = run(workdir, idx, endless)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "in use by another run" in line and str(first.pid) in line
  finally:
    first.kill()
    first.communicate()


@pytest.mark.slow
def test_divergence_is_recorded_and_keeps_last_good_checkpoint(tmp_path, idx):
  workdir = tmp_path / "run"
  r = run(
    workdir,
    idx,
    "--config.model.use_bn=False",
    "--config.optimizer.learning_rate=1e4",
    "--config.max_loss=50",
    "--config.checkpoint_every=1",
    "--config.eval_every=1",
    "--config.log_every=1",
    "--config.num_steps=50",
  )
  assert r.returncode == 3, r.stderr
  status = json.loads((workdir / "status.json").read_text())
  assert status["status"] == "diverged" and 1 <= status["step"] <= 50
  assert f"diverged at step {status['step']}" in r.stderr
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  assert steps and steps[-1] < status["step"]
  for e in RunDir(workdir).metrics():
    for k, v in e.items():
      if k.startswith("eval/"):
        assert np.isfinite(v), e


@pytest.fixture
def finished(tmp_path, idx):
  workdir = tmp_path / "run"
  r = run(workdir, idx, "--config.num_steps=300")
  assert r.returncode == 0, r.stderr
  return workdir


@pytest.mark.slow
def test_corrupt_checkpoint_is_an_error_or_falls_back_when_told(finished, idx):
  newest = finished / "checkpoints" / "300"
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 64:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  r = run(finished, idx, "--config.num_steps=400")
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert "checkpoints/300 cannot be restored" in line and "--fallback_checkpoint" in line
  r = run(finished, idx, "--config.num_steps=400", "--fallback_checkpoint")
  assert r.returncode == 0, r.stderr
  assert "Resumed from the checkpoint at step 200" in r.stderr


@pytest.mark.parametrize(
  "change,expect",
  [
    (
      {"hidden": "(16, 8)"},
      "['batch_stats']['bn1']['mean'] has shape (16,) in the checkpoint, (8,) in the model",
    ),
    (
      {"extra": "--config.model.use_bn=False"},
      "['params']['dense0']['bias'] missing from the checkpoint",
    ),
  ],
)
@pytest.mark.slow
def test_incompatible_checkpoint_names_the_mismatch(finished, idx, change, expect):
  extra = ["--config.num_steps=400"] + ([change["extra"]] if "extra" in change else [])
  hidden = {"hidden": change["hidden"]} if "hidden" in change else {}
  r = run(finished, idx, *extra, **hidden)
  assert r.returncode == 2
  assert "different config" in r.stderr and "--allow_config_change" in r.stderr
  r = run(finished, idx, *extra, "--allow_config_change", **hidden)
  assert r.returncode == 2
  line = r.stderr.strip().splitlines()[-1]
  assert "written by a different model" in line and expect in line, line


@pytest.mark.slow
def test_unwritable_workdir(idx):
  r = run("/proc/bn_repro_run", idx)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "cannot write to /proc/bn_repro_run" in lines[0]
