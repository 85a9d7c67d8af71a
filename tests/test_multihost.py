"""Two processes on loopback (CPU collectives): they train exactly like one process on the same
global batch, and a signal to one of them stops both at the same step."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from idx_files import write_mnist_dir

from bn_repro.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]


def command(workdir, idx_dir, *extra):
  return [
    sys.executable,
    "-m",
    "bn_repro.main",
    "--config=mnist_mlp:bn_sigmoid",
    f"--workdir={workdir}",
    "--config.data.source=idx",
    f"--config.data.idx_dir={idx_dir}",
    "--config.model.hidden=(16, 16)",
    "--config.batch_size=16",
    "--config.eval_batch_size=40",
    "--config.num_steps=8",
    "--config.log_every=4",
    "--config.eval_every=4",
    "--config.checkpoint_every=4",
    "--config.tensorboard=False",
    *extra,
  ]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return e


def checkpoints(workdir) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    os.path.abspath(workdir / "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
  )


def final_params(workdir):
  return jax.tree.leaves(checkpoints(workdir).restore(8)["params"])


def launch_two(workdir, idx_dir, *extra) -> list[subprocess.Popen]:
  """Processes 0 and 1 of one run (two CPU devices each), joined over loopback."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [
    subprocess.Popen(
      command(
        workdir,
        idx_dir,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        *extra,
      ),
      cwd=REPO,
      env=env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  single = tmp_path / "single"
  r = subprocess.run(
    command(single, idx, "--config.num_devices=4"),  # all 4 (the MLP alone would take one)
    cwd=REPO,
    env=env(4),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr

  multi = tmp_path / "multi"
  procs = launch_two(multi, idx)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err

  for a, b in zip(final_params(single), final_params(multi)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  ma, mb = RunDir(single).metrics(), RunDir(multi).metrics()
  assert [e["step"] for e in ma] == [e["step"] for e in mb] == [0, 4, 8]
  for ea, eb in zip(ma, mb):
    for k in ("train/loss", "eval/accuracy", "eval/loss", "probe/p50"):
      if k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path):
  """SIGTERM reaches process 1 only: both save the same checkpoint and exit 4 (stopped),
  where without agreement process 0 would wait forever in the next collective."""
  idx = tmp_path / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  work = tmp_path / "multi"
  procs = launch_two(
    work,
    idx,
    "--config.num_steps=1000000",
    "--config.steps_per_call=20",
    "--config.checkpoint_every=0",
    "--config.eval_every=0",
    "--config.log_every=20",
  )
  try:
    metrics = work / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [4, 4], [err for _, err in outs]
  status = json.loads((work / "status.json").read_text())
  assert status["status"] == "stopped" and status["step"] % 20 == 0
  assert checkpoints(work).latest_step() == status["step"]
