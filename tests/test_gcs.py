"""A gs:// workdir and IDX directory against a local GCS emulator (tests/gcs_emulator.py):
a run, its resume, the bucket's objects, and a missing bucket as one error."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import gcs_emulator
import pytest
from idx_files import write_mnist_dir

from bn_repro.errors import UserError
from bn_repro.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
  "--config.model.hidden=(8, 8)",
  "--config.batch_size=16",
  "--config.eval_batch_size=40",
  "--config.log_every=4",
  "--config.eval_every=4",
  "--config.checkpoint_every=4",
  "--config.num_devices=1",
  "--config.data.source=idx",
  "--config.data.idx_dir=gs://bkt/idx",
]
DEADLINE_S = 600  # only so that a hang fails instead of blocking; nothing asserts on time


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def bucket(monkeypatch):
  """The emulator's environment (also set in this process) and a way to list it."""
  port = _free_port()
  proc = subprocess.Popen(
    [sys.executable, str(REPO / "tests/gcs_emulator.py"), str(port)],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    for _ in range(300):
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        time.sleep(0.1)
    env = gcs_emulator.client_env(port)
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    yield env
  finally:
    proc.kill()
    proc.wait()


def _train(cwd, env, workdir, steps, *flags):
  return subprocess.run(
    [sys.executable, "-m", "bn_repro.main", "--config=mnist_mlp:bn_sigmoid", f"--workdir={workdir}"]
    + TINY
    + [f"--config.num_steps={steps}", *flags],
    cwd=cwd,
    env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
    timeout=DEADLINE_S,
  )


def _objects(prefix: str) -> list[str]:
  import fsspec

  fs = fsspec.filesystem("gs", skip_instance_cache=True)
  return sorted(p[len(prefix) + 1 :] for p in fs.find(prefix))


@pytest.mark.slow
def test_a_gs_workdir_trains_resumes_and_writes_nothing_locally(bucket, tmp_path):
  from etils import epath

  write_mnist_dir(epath.Path("gs://bkt/idx"), train=96, test=80)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  first = _train(cwd, bucket, "gs://bkt/runs/x", 8)
  assert first.returncode == 0, first.stderr[-3000:]
  again = _train(cwd, bucket, "gs://bkt/runs/x", 12)  # resumes from step 8
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from the checkpoint at step 8" in again.stderr, again.stderr[-3000:]
  names = _objects("bkt/runs/x")
  for name in ("config.json", "status.json", "metrics.jsonl", "checkpoints/12/commit_success.txt"):
    assert name in names
  assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
  run = RunDir("gs://bkt/runs/x")
  assert run.status() == {"status": "done", "step": 12}
  steps = [e["step"] for e in run.metrics()]
  assert steps == sorted(steps) and steps[-1] == 12 and len(steps) == len(set(steps))
  assert run.checkpoint_steps() == [4, 8, 12]
  assert json.loads(epath.Path("gs://bkt/runs/x/config.json").read_text())["num_steps"] == 12

  assert os.listdir(cwd) == []  # nothing written on the local disk

  with pytest.raises(UserError, match="bucket gs://nosuch does not exist"):
    RunDir("gs://nosuch/runs/x").check_config({})


@pytest.mark.slow
def test_a_gs_compilation_cache_serves_the_next_run(bucket, tmp_path):
  from etils import epath

  write_mnist_dir(epath.Path("gs://bkt/idx"), train=96, test=80)
  env = {**bucket, "JAX_COMPILATION_CACHE_DIR": ""}  # no cache of the test session's own
  flag = "--config.compilation_cache=gs://bkt/cache"
  first = _train(tmp_path, env, str(tmp_path / "a"), 8, flag)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "compilation cache: gs://bkt/cache/" in first.stderr
  entries = _objects("bkt/cache")
  assert any("jit_init" in e for e in entries) and len(entries) >= 3
  second = _train(tmp_path, env, str(tmp_path / "b"), 8, flag)
  assert second.returncode == 0, second.stderr[-3000:]
  assert _objects("bkt/cache") == entries  # every program loaded, none compiled anew
