"""bn_repro.claims: each verdict on synthetic runs, the scale measurement against its
closed form, the experiments' configs, and the command's bad input."""

import json
import subprocess
import sys

import pytest

from bn_repro.claims import experiments, scale, verdicts
from bn_repro.configs import mnist_mlp
from bn_repro.errors import UserError
from bn_repro.report.results import Run


def _run(acc: dict[int, float], seed: int = 0) -> Run:
  steps = sorted(acc)
  flat = {s: 0.0 for s in steps}
  return Run("r", steps, acc, flat, flat, {s: 1.0 for s in steps}, use_bn=True, seed=seed)


def test_accuracy_higher_needs_every_seed_ahead_at_every_eval():
  bn = [_run({0: 0.1, 250: 0.9, 500: 0.95}), _run({0: 0.1, 250: 0.8, 500: 0.96}, 1)]
  nobn = [_run({0: 0.1, 250: 0.3, 500: 0.9}), _run({0: 0.1, 250: 0.2, 500: 0.95}, 1)]
  c = verdicts.accuracy_higher(bn, nobn)
  assert c.verdict == verdicts.HOLDS
  assert "min 0.030 (0.010–0.050 over 2)" in c.measured  # 0.05 at 500; 0.01 at 500
  nobn[1].accuracy[500] = 0.97
  c = verdicts.accuracy_higher(bn, nobn)
  assert c.verdict == verdicts.FAILS and "first not ahead at step 500" in c.measured


def test_saturating_compares_steps_to_90_percent():
  bn = [_run({0: 0.1, 250: 0.91, 500: 0.95})]
  nobn = [_run({0: 0.1, 250: 0.5, 500: 0.92})]
  c = verdicts.saturating(bn, nobn)
  assert c.verdict == verdicts.HOLDS and "with BN 250, without 500" in c.measured
  assert verdicts.saturating(nobn, bn).verdict == verdicts.FAILS


def test_higher_lr_counts_divergence_as_failure():
  results = {
    ("bn", 0.5): [("done", 0.95)],
    ("nobn", 0.5): [("done", 0.96)],
    ("bn", 2.5): [("done", 0.94)],
    ("nobn", 2.5): [("diverged", None)],
  }
  c = verdicts.higher_lr(results)
  assert c.verdict == verdicts.HOLDS and "no BN —, 1 diverged" in c.measured
  results[("bn", 2.5)] = [("diverged", None)]
  assert verdicts.higher_lr(results).verdict == verdicts.FAILS


def test_regularizes_reads_the_train_test_gap(tmp_path):
  def run_dir(name, train, test):
    d = tmp_path / name
    d.mkdir()
    event = {"step": 100, "eval/accuracy": test, "train_eval/accuracy": train}
    (d / "metrics.jsonl").write_text(json.dumps(event) + "\n")
    return str(d)

  bn, nobn = [run_dir("bn", 0.97, 0.95)], [run_dir("nobn", 0.99, 0.93)]
  c = verdicts.regularizes(bn, nobn)
  assert c.verdict == verdicts.HOLDS and "with BN 0.020, without 0.060" in c.measured


def _tiny(variant):
  c = mnist_mlp.get_config(variant)
  c.model.hidden = (16, 16)
  return c


def test_scale_invariance_with_bn_and_not_without():
  """With BN the deviations are epsilon's effect only; without BN the input gradient of a
  sigmoid net scales roughly with a."""
  bn, nobn = (scale.at_unit_scale(_tiny(v)) for v in ("bn_sigmoid", "nobn_sigmoid"))
  assert (bn.model.init_std, bn.model.init_fan_in) == (1.0, True)
  bn_dx, bn_dw = scale.deviations(bn, 10.0, batch=32)
  nobn_dx, nobn_dw = scale.deviations(nobn, 10.0, batch=32)
  assert bn_dx < 1e-3 and bn_dw < 1e-3
  assert nobn_dx > 0.5 and nobn_dw > 0.5


def test_from_the_small_start_epsilon_alone_moves_the_gradients_by_about_a_percent():
  """N(0, 0.01²) weights: Var[Wu] of about 1e-3, so BN's epsilon breaks the identity by more
  than the claim's tolerance, and at_unit_scale is what the claim measures on."""
  bn_dx, _ = scale.deviations(_tiny("bn_sigmoid"), 10.0, batch=32)
  assert scale.TOLERANCE < bn_dx < 0.2


def test_experiment_configs_take_their_fields_then_the_overrides():
  group = experiments.EXPERIMENTS["lr"][1]
  cs = experiments.configs(group, [0, 1], "", {"num_steps": "12", "model.hidden": (8,)})
  assert [(c.seed, c.optimizer.learning_rate) for c in cs] == [
    (s, lr) for lr in (0.5, 2.5, 15.0) for s in (0, 1)
  ]
  assert {c.num_steps for c in cs} == {12} and cs[0].max_loss == 1e3
  assert not cs[0].model.use_bn and tuple(cs[0].model.hidden) == (8,)
  with pytest.raises(UserError, match="unknown config field 'model.hiden'"):
    experiments.configs(group, [0], "", {"model.hiden": "(8,)"})


def test_finished_needs_every_run_done_at_its_last_step(tmp_path):
  dirs = [tmp_path / "a", tmp_path / "b"]
  for d in dirs:
    d.mkdir()
    (d / "status.json").write_text(json.dumps({"status": "done", "step": 100}))
  assert experiments.finished([str(d) for d in dirs], 100)
  assert not experiments.finished([str(d) for d in dirs], 200)
  (dirs[1] / "status.json").write_text(json.dumps({"status": "running", "step": 50}))
  assert not experiments.finished([str(d) for d in dirs], 100)


def test_cli_bad_override_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "claims"
  proc = subprocess.run(
    [sys.executable, "-m", "bn_repro.claims.cli", f"--workdir={workdir}", "--override=x"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    "bn-repro-claims: error: --override: expected FIELD=VALUE, got 'x'"
  ]
  assert not workdir.exists()
