"""Stops within a time bound: the loop's device calls (training/loop.CallPlan) and a stop
signal acted on after the call in progress, on a fake engine with a fake clock."""

import signal

import numpy as np
import pytest

from bn_repro.configs import mnist_mlp
from bn_repro.metrics import NullWriter
from bn_repro.rundir import RunDir
from bn_repro.signals import StopSignals
from bn_repro.training import loop as loop_lib

SECONDS_PER_STEP = 0.01


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class FakeEngine:
  """Each call of n steps takes n * SECONDS_PER_STEP on the fake clock; step s's loss is s."""

  def __init__(self, clock, signals, signal_during_call=None):
    self.clock, self.signals, self.signal_during = clock, signals, signal_during_call
    self.compile_seconds = 0.0
    self.calls = []

  def train_runs(self, states, start, steps):
    self.calls.append((start, steps))
    self.clock.now += steps * SECONDS_PER_STEP
    if (start, steps) == self.signal_during:
      self.signals.requested = signal.SIGTERM  # arrives while the call runs
    loss = np.arange(start + 1, start + steps + 1, dtype=np.float64)
    metrics = np.stack([loss, np.zeros_like(loss)], -1)[:, None]
    return states, metrics, np.array([True])

  def device_run(self, states, r):
    return states

  def evaluate_run(self, states, r):
    return states, {"eval/accuracy": 0.5}


class Recorder(NullWriter):
  def __init__(self):
    self.events = []

  def write(self, step, scalars):
    self.events.append((step, dict(scalars)))


def run_loop(monkeypatch, tmp_path, call_seconds, signal_during_call=None, steps_per_call=0):
  clock = Clock()
  monkeypatch.setattr(loop_lib.time, "perf_counter", clock)
  c = mnist_mlp.get_config("bn_sigmoid")
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 1500, 500, 0, 0
  c.call_seconds, c.steps_per_call = call_seconds, steps_per_call
  signals = StopSignals()
  engine = FakeEngine(clock, signals, signal_during_call)
  writer = Recorder()
  run = loop_lib.Run(c, dir=RunDir(tmp_path), mgr=None, writer=writer, primary=False)
  loop = loop_lib.Loop(engine, [run], signals, raise_divergence=True)
  return loop, engine, writer, run


def test_chunks_split_into_calls_of_call_seconds_after_the_first_timed_call(monkeypatch, tmp_path):
  loop, engine, writer, run = run_loop(monkeypatch, tmp_path, call_seconds=1.0)
  loop.run({}, 0)
  # The first chunk (500 steps, 5 s) is one call; then 100 steps = 1 s per call.
  assert engine.calls == [(0, 500)] + [(s, 100) for s in range(500, 1500, 100)]
  # Train scalars still cover the whole chunk between log points: mean of losses 501..1000.
  logged = {step: e["train/loss"] for step, e in writer.events}
  assert logged == {500: 250.5, 1000: 750.5, 1500: 1250.5}
  assert run.status == "done"


def test_a_signal_stops_after_the_call_in_progress(monkeypatch, tmp_path):
  loop, engine, writer, run = run_loop(
    monkeypatch, tmp_path, call_seconds=1.0, signal_during_call=(700, 100)
  )
  with pytest.raises(loop_lib.Stopped) as stopped:
    loop.run({}, 0)
  assert stopped.value.step == 800 and stopped.value.signum == signal.SIGTERM
  assert engine.calls[-1] == (700, 100) and run.status == "stopped"
  assert [step for step, _ in writer.events] == [500]  # 800 is no log point


def test_call_seconds_0_keeps_chunks_whole_and_steps_per_call_caps_calls(monkeypatch, tmp_path):
  loop, engine, _, _ = run_loop(
    monkeypatch, tmp_path, call_seconds=0.0, signal_during_call=(0, 500)
  )
  with pytest.raises(loop_lib.Stopped) as stopped:
    loop.run({}, 0)
  assert engine.calls == [(0, 500)] and stopped.value.step == 500
  loop, engine, _, _ = run_loop(monkeypatch, tmp_path, call_seconds=0.0, steps_per_call=200)
  loop.run({}, 0)
  assert engine.calls[:3] == [(0, 167), (167, 167), (334, 166)]  # equal calls of <= 200


@pytest.mark.parametrize(
  "steps,cap,want", [(5, 2, [2, 2, 1]), (250, 100, [84, 83, 83]), (7, 0, [7])]
)
def test_call_lengths_are_equal_to_within_one(steps, cap, want):
  c = mnist_mlp.get_config("bn_sigmoid")
  c.steps_per_call, c.call_seconds = cap, 0.0
  assert loop_lib.CallPlan(c).lengths(steps) == want
