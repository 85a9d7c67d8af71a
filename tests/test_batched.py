"""Batched runs (vmap over seeds and learning rates) against the same runs one at a time."""

import copy
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from bn_repro import batched
from bn_repro import parallel
from bn_repro import train
from bn_repro.errors import UserError
from bn_repro.metrics import read_metrics
from test_train import synthetic, tiny_config

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


def test_batched_runs_equal_sequential_runs():
  configs = run_configs()
  devs = parallel.devices(2)
  bt = batched.BatchedTrainer(configs, synthetic(64, 0), synthetic(37, 1), devs)
  states = parallel.replicate(bt.init_states(), devs)
  states, metrics, finite = bt.train(states, 0, 5)
  assert finite.all() and metrics.shape == (5, len(RUNS), 2)
  for r, c in enumerate(configs):
    single = train.Trainer(c, synthetic(64, 0), synthetic(37, 1), devs)
    s = parallel.replicate(single.init_state(), devs)
    s, m, _ = single.train(s, 0, 5)
    np.testing.assert_allclose(metrics[:, r], m, rtol=1e-4, atol=1e-6)
    got = jax.tree.map(lambda x, r=r: np.asarray(x[0, r]), states.params)
    want = parallel.unreplicate(s.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
    assert bt.evaluate(states, r)["eval/accuracy"] == pytest.approx(
        single.evaluate(s)["eval/accuracy"], abs=1e-6)


def test_train_batched_writes_each_run_and_records_divergence(tmp_path, monkeypatch):
  configs = run_configs()
  configs[2].optimizer.learning_rate = 1e6  # this one blows up
  for c in configs:
    c.max_loss = 100.0
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 4, 4, 4
    c.tensorboard = False
  monkeypatch.setattr(batched.data, "load_splits", lambda _: (synthetic(64, 0), synthetic(37, 1)))
  dirs = [str(tmp_path / f"r{i}") for i in range(len(configs))]
  status = batched.train_batched(configs, dirs)
  assert status == ["done", "done", "diverged"]
  for d in dirs[:2]:
    assert [e["step"] for e in read_metrics(d)] == [0, 4, 8]
    assert json.load(open(f"{d}/status.json"))["status"] == "done"
  diverged = json.load(open(f"{dirs[2]}/status.json"))
  assert diverged["status"] == "diverged" and 1 <= diverged["step"] <= 8


def test_runs_that_differ_in_shape_are_refused():
  configs = run_configs()
  other = copy.deepcopy(configs[0])
  other.model.hidden = (8, 8)
  with pytest.raises(UserError, match="model.hidden"):
    batched.check_compatible([configs[0], other])


def test_stopped_batched_runs_resume_to_the_uninterrupted_result(tmp_path, monkeypatch):
  """SIGTERM in the first chunk: every run saves a checkpoint and says "stopped"; rerun, they
  end as uninterrupted runs do. Runs whose checkpoints are at different steps are refused."""
  configs = run_configs()[:2]
  for c in configs:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 4, 4, 8
    c.tensorboard, c.num_devices = False, 1
  monkeypatch.setattr(batched.data, "load_splits", lambda _: (synthetic(64, 0), synthetic(37, 1)))
  straight = [str(tmp_path / f"straight{i}") for i in range(2)]
  assert batched.train_batched(configs, straight) == ["done", "done"]

  resumed = [str(tmp_path / f"resumed{i}") for i in range(2)]
  train_chunk = batched.BatchedTrainer.train

  def signalled(self, *args):
    os.kill(os.getpid(), signal.SIGTERM)
    return train_chunk(self, *args)

  with monkeypatch.context() as m:
    m.setattr(batched.BatchedTrainer, "train", signalled)
    with pytest.raises(train.Stopped):
      batched.train_batched(configs, resumed)
  for d in resumed:
    assert json.load(open(f"{d}/status.json")) == {"status": "stopped", "step": 4}
    assert os.listdir(f"{d}/checkpoints") == ["4"]
  lagging = tmp_path / "lagging"
  shutil.copytree(resumed[1], lagging)
  shutil.rmtree(lagging / "checkpoints")
  with pytest.raises(UserError, match="resumed0 at step 4, .*lagging at step 0"):
    batched.train_batched(configs, [resumed[0], str(lagging)])

  assert batched.train_batched(configs, resumed) == ["done", "done"]
  for a, b in zip(straight, resumed):
    assert [e["step"] for e in read_metrics(b)] == [0, 4, 8]
    assert untimed(read_metrics(b)) == untimed(read_metrics(a))
    assert json.load(open(f"{b}/status.json")) == {"status": "done", "step": 8}
