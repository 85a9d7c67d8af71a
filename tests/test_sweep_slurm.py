"""The SLURM launcher (bn_repro.sweeps.slurm) on submitit's local executor: one task a
point, statuses as the tasks leave them, a killed point reported and resubmitted, and
finished points skipped. The tasks run a stand-in for the point's runner."""

import json
import os
import sys

from bn_repro.rundir import SweepDir
from bn_repro.sweeps import slurm
from bn_repro.sweeps.resolve import ResolvedPoint

# A stand-in for `bn-repro-sweep ... --point=NAME`: marks the point running, then dies by
# SIGKILL where the point's directory holds "kill", else marks it done.
TASK = """
import json, os, signal, sys
d = os.path.join(sys.argv[1], sys.argv[2].split("=", 1)[1])
os.makedirs(d, exist_ok=True)
status = lambda s: open(os.path.join(d, "status.json"), "w").write(json.dumps(s))
status({"status": "running", "step": 0})
if os.path.exists(os.path.join(d, "kill")):
  os.kill(os.getpid(), signal.SIGKILL)
status({"status": "done", "step": 3})
"""


def _points(root, names):
  return [ResolvedPoint(n, {}, "x", {}, str(root / n), {"num_steps": 3}) for n in names]


def test_a_killed_point_fails_and_a_rerun_resubmits_only_it(tmp_path):
  sweep = tmp_path / "sweep"
  points = _points(sweep, ["a", "b"])
  (sweep / "b").mkdir(parents=True)
  (sweep / "b" / "kill").touch()
  command = [sys.executable, "-c", TASK, str(sweep)]
  options = slurm.Options(cluster="local", time_min=5)
  lines: list[str] = []
  rc = slurm.submit(points, [0, 1], command, str(tmp_path), SweepDir(sweep), options, lines.append)
  assert rc == 1, lines
  assert json.loads((sweep / "a" / "status.json").read_text()) == {"status": "done", "step": 3}
  assert any(line.startswith("[1/2] a: done at step 3 (job ") for line in lines), lines
  assert any(
    "[2/2] b: failed: job" in line and "while the point was running" in line for line in lines
  ), lines
  b = json.loads((sweep / "b" / "status.json").read_text())
  assert b["status"] == "failed" and "ended" in b["error"], b
  assert lines[-1].startswith("sweep: 2/2 finished, 1 failed, 0 running"), lines
  assert any(p.endswith("_log.out") for p in os.listdir(sweep / "submitit"))

  (sweep / "b" / "kill").unlink()
  lines.clear()
  rc = slurm.submit(points, [0, 1], command, str(tmp_path), SweepDir(sweep), options, lines.append)
  assert rc == 0, lines
  assert lines[0] == "[1/2] a: skipped (done)"
  assert [line.split(": ")[1].split(" as ")[0] for line in lines[1:2]] == ["submitted"]
  assert json.loads((sweep / "b" / "status.json").read_text()) == {"status": "done", "step": 3}

  lines.clear()
  assert slurm.submit(points, [0, 1], command, ".", SweepDir(sweep), options, lines.append) == 0
  assert lines == [
    "[1/2] a: skipped (done)",
    "[2/2] b: skipped (done)",
    "sweep: 2/2 finished, 0 failed, 0 running, elapsed 0:00:00, none left",
  ]
