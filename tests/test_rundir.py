"""The run directory (bn_repro.rundir) and dotted fields (bn_repro.fields): the files a run
and a sweep write, how they are read back, locks, and the config-drift check."""

import math
import os
import subprocess
import sys

import pytest

from bn_repro import fields
from bn_repro.errors import UserError
from bn_repro.rundir import RunDir, SweepDir, read_json, write_json


def test_a_new_directory_reads_as_pending_and_writes_nothing(tmp_path):
  run = RunDir(tmp_path / "run")
  assert run.status() == {"status": "pending"}
  assert run.checkpoint_steps() == [] and run.latest_checkpoint() is None
  assert not run.busy() and not run.exists()
  with pytest.raises(UserError, match="does not exist"):
    run.config()


def test_config_status_and_metrics_round_trip(tmp_path):
  run = RunDir(tmp_path)
  run.write_config({"seed": 3, "model": {"hidden": (4, 4)}})
  run.write_status("running", step=5)
  writer = run.metric_writer(tensorboard=False)
  writer.write(0, {"eval/accuracy": 0.5})
  writer.write(4, {"train/loss": float("nan"), "diverged": True})
  writer.close()
  assert run.config() == {"seed": 3, "model": {"hidden": [4, 4]}}
  assert run.status() == {"status": "running", "step": 5}
  events = run.metrics()
  assert events[0] == {"step": 0, "eval/accuracy": 0.5}
  assert math.isnan(events[1]["train/loss"]) and events[1]["diverged"] is True
  assert sorted(os.listdir(tmp_path)) == [RunDir.CONFIG, RunDir.METRICS, RunDir.STATUS]


def test_truncate_after_drops_events_past_a_step(tmp_path):
  run = RunDir(tmp_path)
  writer = run.metric_writer(tensorboard=False)
  for step in (0, 4, 8):
    writer.write(step, {"x": step})
  writer.truncate_after(4)
  assert [e["step"] for e in run.metrics()] == [0, 4]


def test_unreadable_json_is_one_clear_error(tmp_path):
  (tmp_path / RunDir.CONFIG).write_text("{not json")
  with pytest.raises(UserError, match="cannot read .*config.json"):
    RunDir(tmp_path).config()
  (tmp_path / RunDir.STATUS).write_text("[1, 2]")
  assert RunDir(tmp_path).status() == {"status": "pending"}  # status: pending when unreadable


def test_write_json_leaves_no_temporary_file(tmp_path):
  write_json(tmp_path / "x.json", {"a": (1, 2)})
  assert os.listdir(tmp_path) == ["x.json"] and read_json(tmp_path / "x.json") == {"a": [1, 2]}


def test_checkpoint_steps_are_the_numbered_folders(tmp_path):
  run = RunDir(tmp_path)
  for name in ("20", "5", "tmp", "100.orbax-checkpoint-tmp"):
    (run.checkpoint_dir / name).mkdir(parents=True)
  assert run.checkpoint_steps() == [5, 20] and run.latest_checkpoint() == 20


def test_check_config_lists_what_differs_and_lets_resumable_fields_change(tmp_path):
  run = RunDir(tmp_path)
  run.write_config({"seed": 0, "num_steps": 10, "optimizer": {"learning_rate": 0.5}})
  run.check_config({"seed": 0, "num_steps": 20, "optimizer": {"learning_rate": 0.5}}, ["num_steps"])
  with pytest.raises(UserError, match=r"optimizer.learning_rate \(0.5 -> 0.1\)"):
    run.check_config({"seed": 0, "num_steps": 10, "optimizer": {"learning_rate": 0.1}})


def test_the_lock_refuses_a_second_process_and_claim_sees_it(tmp_path):
  run = RunDir(tmp_path / "run")
  with run.exclusive():
    assert (run.path / RunDir.LOCK).read_text() == str(os.getpid())
    code = (
      "import sys; from bn_repro.rundir import RunDir; from bn_repro.errors import UserError\n"
      f"run = RunDir({str(run)!r})\n"
      "print(run.busy(), run.claim())\n"
      "try:\n  run.exclusive().__enter__()\nexcept UserError as e:\n  print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    busy_and_claim, message = out.stdout.splitlines()
    assert busy_and_claim == "True None"
    assert f"in use by another run (pid {os.getpid()})" in message
  fd = run.claim()  # free again once the lock is released
  assert fd is not None
  os.close(fd)


def test_sweep_dir_names_its_points(tmp_path):
  sweep = SweepDir(tmp_path)
  with pytest.raises(UserError, match="does not exist"):
    sweep.record()
  sweep.write_record({"points": [{"name": "a"}]})
  assert sweep.record()["points"] == [{"name": "a"}]
  assert sweep.point("a").path == RunDir(tmp_path / "a").path


def test_fields_get_flatten_and_differ():
  tree = {"a": {"b": 1, "c": (1, 2)}, "d": float("nan")}
  assert fields.get(tree, "a.b") == 1 and fields.get(tree, "a.x", None) is None
  with pytest.raises(KeyError):
    fields.get(tree, "a.x")
  assert fields.flatten(tree)["a.c"] == [1, 2]
  assert fields.differ(tree, {"a": {"b": 2, "c": [1, 2]}, "d": float("nan")}) == ["a.b"]


@pytest.mark.parametrize(
  "text, like, want",
  [("3", 0.5, 3.0), ("(1, 2)", [0], [1, 2]), ("True", False, True), ("abc", "x", "abc")],
)
def test_parse_like_gives_the_fields_type(text, like, want):
  got = fields.parse_like(text, like)
  assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text, like", [("1", True), ("1.5", 1), ("x", 0.5), ("[1]", 0)])
def test_parse_like_refuses_another_type(text, like):
  with pytest.raises(ValueError, match="is not a"):
    fields.parse_like(text, like)


def test_parse_assignments():
  assert fields.parse_assignments(["config.a=1", "b=x=y", "a=2"]) == {"a": "2", "b": "x=y"}
  with pytest.raises(UserError, match="expected FIELD=VALUE"):
    fields.parse_assignments(["novalue"])
