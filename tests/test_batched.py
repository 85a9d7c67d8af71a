"""Batched runs (vmap over seeds and learning rates) against the same runs one at a time."""

import copy
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train import synthetic, tiny_config

from bn_repro import data, parallel, training
from bn_repro.errors import UserError
from bn_repro.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = [(0, 0.5), (1, 0.5), (0, 0.1)]  # (seed, learning rate)
TIMING = ("steps_per_sec", "compile_seconds")  # differ from run to run


def untimed(events: list[dict]) -> list[dict]:
  """Metric events without the timing keys."""
  return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


def run_configs():
  out = []
  for seed, lr in RUNS:
    c = tiny_config(seed=seed, **{"optimizer.learning_rate": lr, "optimizer.momentum": 0.9})
    out.append(c)
  return out


def four_run_configs():
  return run_configs() + [
    tiny_config(seed=1, **{"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.9})
  ]


@pytest.mark.slow
def test_batched_runs_equal_sequential_runs():
  configs = run_configs()
  devs = parallel.devices(2)
  bt = training.BatchedTrainer(configs, synthetic(64, 0), synthetic(37, 1), devs)
  states = parallel.replicate(bt.initial_states(), devs)
  states, metrics, finite = bt.train(states, 0, 5)
  assert finite.all() and metrics.shape == (5, len(RUNS), 2)
  for r, c in enumerate(configs):
    single = training.Trainer(c, synthetic(64, 0), synthetic(37, 1), devs)
    s = parallel.replicate(single.init_state(), devs)
    s, m, _ = single.train(s, 0, 5)
    np.testing.assert_allclose(metrics[:, r], m, rtol=1e-4, atol=1e-6)
    got = jax.tree.map(lambda x, r=r: np.asarray(x[0, r]), states.params)
    want = parallel.unreplicate(s.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
    assert bt.evaluate(states, r)["eval/accuracy"] == pytest.approx(
      single.evaluate(s)["eval/accuracy"], abs=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("data_devices", [1, 2])
def test_runs_spread_over_rows_of_devices_equal_the_runs_alone(data_devices):
  """4 runs over 2 rows of `data_devices` devices (2 runs a row, each row data-parallel
  as a run alone): metrics, parameters, statistics and evaluation bit for bit."""
  configs = four_run_configs()
  devs = parallel.devices(data_devices)
  bt = training.BatchedTrainer(configs, synthetic(64, 0), synthetic(37, 1), devs, shards=2)
  states = bt.place(bt.initial_states())
  states, metrics, finite = bt.train(states, 0, 5)
  states, more, finite = bt.train(states, 5, 3)  # a second chunk continues the first
  leaf = jax.tree.leaves(states.params)[0]
  assert len(leaf.sharding.device_set) == 2 * data_devices and finite.all()
  for r, c in enumerate(configs):
    single = training.Trainer(c, synthetic(64, 0), synthetic(37, 1), devs)
    s = parallel.replicate(single.init_state(), devs)
    s, m, _ = single.train(s, 0, 5)
    s, m2, _ = single.train(s, 5, 3)
    np.testing.assert_array_equal(metrics[:, r], m)
    np.testing.assert_array_equal(more[:, r], m2)
    for got, want in ((states.params, s.params), (states.batch_stats, s.batch_stats)):
      jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.map(lambda x, r=r: np.asarray(x[0, r]), got),
        parallel.unreplicate(want),
      )
    assert bt.evaluate(states, r) == single.evaluate(s)


def test_run_shards_is_the_largest_divisor_that_fits_with_two_runs_a_row():
  assert len(jax.local_devices()) == 8  # conftest's CPU devices
  assert parallel.run_shards(8, 1) == 4
  assert parallel.run_shards(16, 1) == 8
  assert parallel.run_shards(24, 1) == 8  # 8 rows of 3 (12 rows would not fit)
  assert parallel.run_shards(12, 2) == 4
  assert parallel.run_shards(6, 2) == 3
  assert parallel.run_shards(10, 2) == 2  # 5 rows of 2 devices do not fit in 8
  assert parallel.run_shards(3, 1) == 1  # 3 rows would hold one run each
  assert parallel.run_shards(4, 8) == 1


@pytest.mark.parametrize(
  "xla_flags,want",
  [
    ("", "True 1 3 3"),  # 3 CPU devices for runs; a single run still sees one
    ("--xla_force_host_platform_device_count=4", "False 4 4 3"),  # the user's count stands
  ],
)
def test_add_cpu_devices_adds_devices_for_runs_only(xla_flags, want):
  code = (
    "import jax; from bn_repro import parallel; added = parallel.add_cpu_devices(3); "
    "print(added, len(parallel.devices()), len(jax.local_devices()), "
    "parallel.run_shards(6, 1))"
  )
  env = dict(os.environ, XLA_FLAGS=xla_flags)
  r = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=300,
    check=False,
  )
  assert r.returncode == 0 and r.stdout.split("\n")[-2] == want, r.stdout + r.stderr


@pytest.mark.slow
def test_train_batched_writes_each_run_and_records_divergence(tmp_path, monkeypatch):
  configs = run_configs()
  configs[2].optimizer.learning_rate = 1e6  # this one blows up
  for c in configs:
    c.max_loss = 100.0
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 4, 4, 4
    c.tensorboard = False
  monkeypatch.setattr(data, "load_splits", lambda _: (synthetic(64, 0), synthetic(37, 1)))
  dirs = [str(tmp_path / f"r{i}") for i in range(len(configs))]
  status = training.train_batched(configs, dirs)
  assert status == ["done", "done", "diverged"]
  for d in dirs[:2]:
    assert [e["step"] for e in RunDir(d).metrics()] == [0, 4, 8]
    assert json.load(open(f"{d}/status.json"))["status"] == "done"
  diverged = json.load(open(f"{dirs[2]}/status.json"))
  assert diverged["status"] == "diverged" and 1 <= diverged["step"] <= 8


def test_runs_that_differ_in_shape_are_refused():
  configs = run_configs()
  other = copy.deepcopy(configs[0])
  other.model.hidden = (8, 8)
  with pytest.raises(UserError, match="model.hidden"):
    training.check_compatible([configs[0], other])


@pytest.mark.slow
def test_stopped_batched_runs_resume_to_the_uninterrupted_result(tmp_path, monkeypatch):
  """SIGTERM in the first chunk: every run saves a checkpoint and says "stopped"; rerun, they
  end as uninterrupted runs do. Runs whose checkpoints are at different steps are refused.
  One device a run, so the 4 runs train 2 on each of 2 devices (parallel.run_shards)."""
  configs = four_run_configs()
  assert parallel.run_shards(len(configs), 1) == 2
  for c in configs:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 4, 4, 8
    c.tensorboard, c.num_devices = False, 1
  monkeypatch.setattr(data, "load_splits", lambda _: (synthetic(64, 0), synthetic(37, 1)))
  straight = [str(tmp_path / f"straight{i}") for i in range(4)]
  assert training.train_batched(configs, straight) == ["done"] * 4

  resumed = [str(tmp_path / f"resumed{i}") for i in range(4)]
  train_chunk = training.BatchedTrainer.train

  def signalled(self, *args):
    os.kill(os.getpid(), signal.SIGTERM)
    return train_chunk(self, *args)

  with monkeypatch.context() as m:
    m.setattr(training.BatchedTrainer, "train", signalled)
    with pytest.raises(training.Stopped):
      training.train_batched(configs, resumed)
  for d in resumed:
    assert json.load(open(f"{d}/status.json")) == {"status": "stopped", "step": 4}
    assert os.listdir(f"{d}/checkpoints") == ["4"]
  lagging = tmp_path / "lagging"
  shutil.copytree(resumed[1], lagging)
  shutil.rmtree(lagging / "checkpoints")
  with pytest.raises(UserError, match="resumed0 at step 4, .*lagging at step 0"):
    training.train_batched(configs, [resumed[0], str(lagging)] + resumed[2:])

  assert training.train_batched(configs, resumed) == ["done"] * 4
  for a, b in zip(straight, resumed):
    assert [e["step"] for e in RunDir(b).metrics()] == [0, 4, 8]
    assert untimed(RunDir(b).metrics()) == untimed(RunDir(a).metrics())
    assert json.load(open(f"{b}/status.json")) == {"status": "done", "step": 8}
