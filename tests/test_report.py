"""REPORT.md on a partial sweep: only the paper's numbers in its column, a claim row only
where the sweep holds (and has run) the configurations it needs, how many points ran."""

import json

from bn_repro.report import report, results


def _sweep(root, ran):
  """lr_grid-like points (nonlinearity x BN x lr); those named in `ran` have finished."""
  points = []
  for nl in ("sigmoid", "relu"):
    for bn in (True, False):
      for lr in (0.1, 1.0):
        fields = {"model.nonlinearity": nl, "model.use_bn": bn, "optimizer.learning_rate": lr}
        name = f"{nl},bn={bn},lr={lr}"
        points.append({"name": name, "fields": fields, "command": f"bn-repro point {name}"})
        if name not in ran:
          continue
        d = root / name
        d.mkdir()
        evals = [{"step": s, "eval/accuracy": 0.5 + s / 1000} for s in (0, 100, 200)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        (d / "status.json").write_text(json.dumps({"status": "done", "step": 200}))
        config = {"model": {"use_bn": bn, "nonlinearity": nl}, "optimizer": {"learning_rate": lr}}
        (d / "config.json").write_text(json.dumps(config))
  record = {"sweep": "mnist_sweeps:lr_grid", "points": points, "runner_command": "bn-repro-sweep x"}
  (root / "sweep.json").write_text(json.dumps(record))
  return results.load_sweep(str(root), 0.6)


def test_partial_sweep_report_claims_only_what_ran(tmp_path):
  res = _sweep(tmp_path, {"sigmoid,bn=True,lr=0.1", "sigmoid,bn=True,lr=1.0"})
  a = report.analyze(res, 0.6, 0.5)
  assert report.measured_claims(a) == {}  # no BN / no-BN pair has run
  text = report.make_report(a, [], "report it")
  assert "**a partial sweep: 2 of 8 points ran**" in text
  assert "## Paper vs. ours\n\nNot measured by this sweep" in text
  assert "- Learning rate: measured by `--sweep=mnist_sweeps:lr_grid`." in text
  assert "97.5" not in text  # public reproductions' numbers: not shown as the paper's
  assert "bn-repro point" not in text and "bn-repro-sweep x" in text  # the sweep's command


def test_claim_rows_need_both_sides_and_say_how_many_points_ran(tmp_path):
  ran = {f"sigmoid,bn={bn},lr={lr}" for bn in (True, False) for lr in (0.1, 1.0)}
  a = report.analyze(_sweep(tmp_path, ran), 0.6, 0.5)
  ours = report.measured_claims(a)
  assert set(ours) == {"fig1a", "fig1bc", "higher_lr", "sigmoid"}
  assert "relu, BN: 0 of 2 points ran" in ours["higher_lr"]
  assert "sigmoid, BN: 1" in ours["higher_lr"]  # both sigmoid points finished
  text = report.make_report(a, [], "report it")
  assert "(Figure 1(a), Sec. 4.1)" in text and "public reproductions, not the paper" in text
  assert "**a partial sweep: 4 of 8 points ran**" in text
