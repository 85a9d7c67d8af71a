"""The benchmark (bn_repro.benchmark) on a few steps (without the small BN-Inception, whose
training the Inception tests cover): every loop at every placement, each loop's best
placement, and ratios that are the same-round medians the docstring promises. Speeds
themselves are not checked: the suite has no clock."""

import statistics
import time

import pytest

from bn_repro.benchmark import figure1
from bn_repro.benchmark import measure as benchmark


@pytest.mark.slow
def test_measure_reports_every_loop_at_every_placement(capsys):
  res = benchmark.measure("", steps=3, repeats=2, with_inception=False)
  loops = {"floor", "ours_bn", "ours_nobn", "flax_scan_bn", "flax_scan_nobn", "per_step_bn"}
  assert loops | {"batched_8_runs"} <= set(res["steps_per_sec"])
  places = res["placements"]
  assert set(places) == set(benchmark.placements()) and "all_cores" in places
  rates = res["steps_per_sec_rounds"]
  for k, v in res["steps_per_sec"].items():
    at = {p: rates[p][k] for p in places}
    assert all(len(r) == 2 for r in at.values())
    best = res["best_placement"][k]
    assert v == max(at[best]) == max(max(r) for r in at.values())
    floor = rates[res["best_placement"]["floor"]]["floor"]
    same_round = [a / f for a, f in zip(at[best], floor)]
    assert res["ratio_to_floor"][k] == pytest.approx(statistics.median(same_round))
  assert res["ratio_to_floor"]["floor"] == 1.0
  b = res["batched"]
  assert b["runs"] == 8 and b["run_steps_per_sec"] == 8 * res["steps_per_sec"]["batched_8_runs"]
  assert b["devices"] == 4  # 2 runs a row of conftest's 8 devices
  assert "small_bn_inception" not in res  # with_inception=False
  assert res["compile_seconds"]["ours_bn"] > 0
  mem = res["peak_memory_mb"]
  # The floor's program takes its 3 steps' batches of 60 images as float32, and the weights.
  assert mem["floor"] >= (3 * 60 * 784 + 784 * 100) * 4 / 2**20
  benchmark.print_table(res)
  table = capsys.readouterr().out
  for loop in loops:
    assert f"\n{loop} " in table
  assert "8 seeds batched in one program" in table


def test_best_placement_and_crossover_from_rounds():
  rates = {
    "one_core": {"floor": [10.0, 12.0], "ours_bn": [9.0, 8.0], "ours_bn_h400": [1.0, 1.0]},
    "all_cores": {"floor": [11.0, 11.0], "ours_bn": [6.0, 7.0], "ours_bn_h400": [2.0, 3.0]},
  }
  best, at_best = benchmark.best_placement(rates)
  assert best == {"floor": "one_core", "ours_bn": "one_core", "ours_bn_h400": "all_cores"}
  assert at_best["ours_bn_h400"] == [2.0, 3.0]
  assert benchmark.paired_ratio(at_best, "ours_bn", "floor") == pytest.approx((0.9 + 8 / 12) / 2)
  facts = {"ours_bn": {"flops": 35.784e6}, "ours_bn_h400": {"flops": 4e8}}
  h100, h400 = benchmark.crossover(rates, facts, [400])
  assert h100 == {
    "hidden": 100,
    "mflop_per_step": pytest.approx(35.784),
    "one_core": 9.0,
    "all_cores": 7.0,
    "one_core_over_all": pytest.approx((1.5 + 8 / 7) / 2),
  }
  assert h400["one_core_over_all"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_flax_peer_evaluates_like_figure1():
  from bn_repro.benchmark import peer

  rows = peer.train("", use_bn=True, steps=20, every=10)
  assert [r["step"] for r in rows] == [0, 10, 20]
  for r in rows:
    assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0 and r["p15"] <= r["p50"] <= r["p85"]
  # At step 0 the probe reads BN's output with scale 1 and bias 0: each batch's values of the
  # unit have mean 0 and variance 1, so the pooled 15th/85th percentiles are near -1 and 1.
  assert abs(rows[0]["p50"]) < 0.3 and abs(rows[0]["p85"] - 1.04) < 0.3
  assert abs(rows[0]["p15"] + 1.04) < 0.3
  plain = peer.train("", use_bn=False, steps=10, every=10)
  assert [r["step"] for r in plain] == [0, 10]
  assert all(r["p15"] <= r["p50"] <= r["p85"] for r in plain)


@pytest.mark.slow
def test_flax_peer_runs_both_nets_side_by_side():
  assert figure1.peer_seconds("", steps=20) > 0


def test_figure1_split_reads_each_net_from_the_log():
  started = time.mktime((2026, 12, 2, 23, 59, 58, 0, 0, -1))  # the runs cross midnight
  log = "\n".join(
    [
      "bn: I1202 23:59:59.500000 1 console.py:119] run: /tmp/f/bn  (a new run)",
      "nobn: I1202 23:59:59.750000 1 console.py:119] run: /tmp/f/nobn  (a new run)",
      "bn: I1202 23:59:59.600000 1 train.py:99] building the model's state ...",
      "bn: I1203 00:00:01.100000 1 loop.py:181] compiling the evaluation (step 0) ...",
      "bn: I1203 00:00:01.400000 1 loop.py:185] compiled and ran the evaluation in 0.3 s",
      "bn: I1203 00:00:01.500000 1 engine.py:134] compiling the training program ...",
      "bn: I1203 00:00:02.000000 1 engine.py:141] compiled in 0.5 s",
      "bn: I1203 00:00:30.000000 1 loop.py:246] time: train 24.5 s, eval 3.1 s, "
      "checkpoints 0.3 s (training compiles 0.5 s)",
      "bn: I1203 00:00:30.100000 1 console.py:119] done at step 50000 in 30.6 s",
    ]
  )  # fmt: skip
  nobn = log.replace("bn: ", "nobn: ").replace("nobn: I1202 23:59:59.500000", "x")
  split = figure1.split(log + "\n" + nobn, started, started + 34.6)
  bn = split["bn"]
  assert bn["start_up"] == pytest.approx(1.5) and bn["state"] == pytest.approx(1.5)
  assert bn["first_eval"] == pytest.approx(0.3) and bn["train_compile"] == pytest.approx(0.5)
  assert (bn["train"], bn["evals"], bn["checkpoints"]) == (24.5, 3.1, 0.3)
  assert bn["after"] == pytest.approx(34.6 - 32.1)
  assert split["nobn"]["start_up"] == pytest.approx(1.75)  # its own first line
