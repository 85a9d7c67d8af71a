"""bn_repro.report.ablations and its CLI, scripts/ablation_report.py, on sweep directories
written here (no training), and the ablation sweeps' definitions."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from test_train import set_fields

from bn_repro import validation
from bn_repro.configs import ablation_sweeps, mnist_mlp
from bn_repro.report import ablations
from bn_repro.sweeps import grid as sw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ablation_report.py")


def write_sweep(root, points):
  """points: [(name, fields, status, events)] -> a sweep dir as bn_repro.sweeps writes it."""
  os.makedirs(root)
  record = {
    "sweep": "bn_repro/configs/ablation_sweeps.py:test",
    "description": "",
    "aliases": {},
    "points": [{"name": n, "fields": f, "command": ""} for n, f, _, _ in points],
  }
  with open(os.path.join(root, "sweep.json"), "w") as fh:
    json.dump(record, fh)
  for name, _, status, events in points:
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "status.json"), "w") as fh:
      json.dump({"status": status, "step": events[-1]["step"]}, fh)
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
      fh.writelines(json.dumps(e) + "\n" for e in events)
  return root


def run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT)


def curve(accs, extra=lambda step: {}):
  return [
    dict(
      {
        "step": 250 * i,
        "eval/accuracy": a,
        "probe/p15": -1.0 - 0.1 * i,
        "probe/p50": -0.1 * i,
        "probe/p85": 1.0 - 0.1 * i,
      },
      **extra(250 * i),
    )
    for i, a in enumerate(accs)
  ]


def test_regularization_gap_and_variants_table(tmp_path):
  reg = write_sweep(
    str(tmp_path / "reg"),
    [
      (
        "bn=on,dropout=0,seed=0",
        {"model.use_bn": True, "model.dropout_rate": 0.0, "seed": 0},
        "done",
        curve([0.1, 0.9, 0.95], lambda s: {"train_eval/accuracy": 0.99}),
      ),
      (
        "bn=on,dropout=0,seed=1",
        {"model.use_bn": True, "model.dropout_rate": 0.0, "seed": 1},
        "done",
        curve([0.1, 0.9, 0.93], lambda s: {"train_eval/accuracy": 0.98}),
      ),
      (
        "bn=off,dropout=0,seed=0",
        {"model.use_bn": False, "model.dropout_rate": 0.0, "seed": 0},
        "running",
        curve([0.1, 0.5], lambda s: {"train_eval/accuracy": 0.6}),
      ),
    ],
  )
  var = write_sweep(
    str(tmp_path / "var"),
    [
      ("bn=on,seed=0", {"model.use_bn": True, "seed": 0}, "done", curve([0.1, 0.9, 0.96])),
      (
        "bn=on,ghost=6,seed=0",
        {"model.use_bn": True, "bn.virtual_batch_size": 6, "seed": 0},
        "done",
        curve([0.1, 0.8, 0.97]),
      ),
    ],
  )
  out = tmp_path / "report"
  r = run(f"--regularization={reg}", f"--variants={var}", f"--report_dir={out}")
  assert r.returncode == 0, r.stderr
  md = (out / "regularization.md").read_text()
  # Gap per seed: 0.99 - 0.95 and 0.98 - 0.93; mean 0.045, sample std 0.0071.
  row = next(l for l in md.splitlines() if l.startswith("| BN, dropout 0.0"))
  assert "0.9850 ± 0.0071" in row and "0.9400 ± 0.0141" in row and "0.0450 ± 0.0071" in row
  # A run still going counts in no final number.
  row = next(l for l in md.splitlines() if l.startswith("| no BN, dropout 0.0"))
  assert row.split(" | ")[1:4] == ["-", "-", "-"] and "1 running" in row
  md = (out / "variants.md").read_text()
  assert "| ghost batches of 6 | 0.8000 |" in md and "| BN (paper) | 0.9000 |" in md
  for name in ("regularization.png", "variants.png", "ABLATIONS.md"):
    assert (out / name).stat().st_size > 0
  assert not [n for n in os.listdir(out) if n.startswith(".")]  # no scratch left behind


def test_ics_table_reads_the_probe_metrics(tmp_path):
  def ics(rel):
    return lambda step: {
      "ics/dense0/rel": 0.0,
      "ics/dense0/cos": 1.0,
      "ics/dense1/rel": rel * (1 + step / 250),
      "ics/dense1/cos": 1 - rel,
    }

  d = write_sweep(
    str(tmp_path / "ics"),
    [
      (
        "bn=on,seed=0",
        {"model.use_bn": True, "seed": 0},
        "done",
        curve([0.1, 0.9, 0.95], ics(0.1)),
      ),
      (
        "bn=off,seed=0",
        {"model.use_bn": False, "seed": 0},
        "done",
        curve([0.1, 0.5, 0.9], ics(0.4)),
      ),
    ],
  )
  out = tmp_path / "r"
  r = run(f"--ics={d}", f"--report_dir={out}")
  assert r.returncode == 0, r.stderr
  md = (out / "ics.md").read_text()
  # Medians over steps 0, 250, 500 of rel * (1, 2, 3): 2 * rel; cos 1 - rel.
  assert "| BN | 0.200 / 0.900 |" in md and "| no BN | 0.800 / 0.600 |" in md
  assert "dense0" not in md.split("|---|")[0]  # the first layer has no shift to show


def test_a_section_is_returned_and_nothing_written(tmp_path, monkeypatch):
  d = write_sweep(
    str(tmp_path / "var"),
    [
      ("bn=on,seed=0", {"model.use_bn": True, "seed": 0}, "done", curve([0.1, 0.9, 0.96])),
      ("bn=off,seed=0", {"model.use_bn": False, "seed": 0}, "done", curve([0.1, 0.5, 0.7])),
    ],
  )
  before = sorted(tmp_path.rglob("*"))
  monkeypatch.chdir(tmp_path)
  section = ablations.variants(d)
  assert list(section.figures) == ["variants.png"]
  assert isinstance(section.figures["variants.png"], Figure)
  md = "\n".join(section.markdown)
  assert "| BN (paper) | 0.9000 |" in md and "| no BN | 0.5000 |" in md
  assert sorted(tmp_path.rglob("*")) == before


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
  out = tmp_path / "r"
  r = run(f"--ics={tmp_path}", f"--report_dir={out}")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
  assert "not a sweep dir" in r.stderr and not out.exists()
  no_ics = write_sweep(
    str(tmp_path / "plain"),
    [("bn=on,seed=0", {"model.use_bn": True, "seed": 0}, "done", curve([0.1, 0.9]))],
  )
  r = run(f"--ics={no_ics}", f"--report_dir={out}")
  assert r.returncode == 2 and "ics_probe=True" in r.stderr
  assert not os.listdir(out)


@pytest.mark.parametrize("name", sorted(ablation_sweeps.SWEEPS))
def test_every_ablation_point_is_a_valid_config(name):
  sweep = ablation_sweeps.get_sweep(name)
  names = set()
  for point in sweep.grid:
    config = set_fields(mnist_mlp.get_config("bn_sigmoid"), dict(sweep.fixed, **point))
    validation.validate(config)
    validation.validate_devices(config, 1)
    names.add(sw.point_name(point, sweep.aliases))
  assert len(names) == len(sweep.grid)  # every point has its own directory
  assert np.all([p.get("seed") in ablation_sweeps.SEEDS for p in sweep.grid])
