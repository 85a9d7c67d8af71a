"""The benchmark (bn_repro.benchmark) on a few steps (without the small BN-Inception, whose
training the Inception tests cover): every row is there and the ratios are the same-round
medians the docstring promises. Speeds themselves are not checked: the suite has no clock."""

import pytest

from bn_repro.benchmark import measure as benchmark


@pytest.mark.slow
def test_measure_reports_every_loop(capsys):
  res = benchmark.measure("", steps=3, repeats=2, with_inception=False)
  loops = {"floor", "ours_bn", "ours_nobn", "per_step_bn", "per_step_nobn"}
  assert loops <= set(res["steps_per_sec"])
  for k, v in res["steps_per_sec"].items():
    rounds = res["steps_per_sec_rounds"][k]
    assert len(rounds) == 2 and v == max(rounds)
    same_round = sorted(a / f for a, f in zip(rounds, res["steps_per_sec_rounds"]["floor"]))
    assert res["ratio_to_floor"][k] == pytest.approx(sum(same_round) / 2)
  assert res["ratio_to_floor"]["floor"] == 1.0
  b = res["batched"]
  assert b["runs"] == 8 and b["run_steps_per_sec"] == 8 * max(
    res["steps_per_sec_rounds"]["batched_8_runs"]
  )
  assert b["one_device_run_steps_per_sec"] == 8 * max(
    res["steps_per_sec_rounds"]["batched_8_runs_1_device"]
  )
  assert b["devices"] == 4 and b["one_device_devices"] == 1  # 2 runs a row of conftest's 8
  assert "small_bn_inception" not in res  # with_inception=False
  assert res["compile_seconds"]["ours_bn"] > 0
  mem = res["peak_memory_mb"]
  assert set(mem) == loops | {"batched_8_runs", "batched_8_runs_1_device"}  # torch: not XLA
  # The floor's program takes its 3 steps' batches of 60 images as float32, and the weights.
  assert mem["floor"] >= (3 * 60 * 784 + 784 * 100) * 4 / 2**20
  assert mem["batched_8_runs_1_device"] > mem["batched_8_runs"]  # 8 runs on one vs 2 on each
  benchmark.print_table(res)
  table = capsys.readouterr().out
  for loop in loops:
    assert f"\n{loop} " in table
  assert "8 seeds batched in one program" in table
