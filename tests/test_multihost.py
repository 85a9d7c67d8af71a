"""Two processes on loopback (CPU collectives) train exactly like one process on the same global batch."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from bn_repro.metrics import read_metrics
from idx_files import write_mnist_dir

REPO = pathlib.Path(__file__).resolve().parents[1]


def command(workdir, idx_dir, *extra):
  return [sys.executable, "-m", "bn_repro.main", "--config=configs/mnist_mlp.py:bn_sigmoid",
          f"--workdir={workdir}", "--config.data.source=idx", f"--config.data.idx_dir={idx_dir}",
          "--config.model.hidden=(16, 16)", "--config.batch_size=16",
          "--config.eval_batch_size=40", "--config.num_steps=8", "--config.log_every=4",
          "--config.eval_every=4", "--config.checkpoint_every=4", "--config.tensorboard=False",
          *extra]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return e


def final_params(workdir):
  mgr = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"),
                              item_handlers=ocp.StandardCheckpointHandler())
  return jax.tree.leaves(mgr.restore(8)["params"])


def test_two_processes_equal_one_process(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  write_mnist_dir(idx, train=96, test=30)
  single = tmp_path / "single"
  r = subprocess.run(command(single, idx), cwd=REPO, env=env(4), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      command(multi, idx, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              f"--process_id={i}"), cwd=REPO, env=env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err

  for a, b in zip(final_params(single), final_params(multi)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  ma, mb = read_metrics(single), read_metrics(multi)
  assert [e["step"] for e in ma] == [e["step"] for e in mb] == [0, 4, 8]
  for ea, eb in zip(ma, mb):
    for k in ("train/loss", "eval/accuracy", "eval/loss", "probe/p50"):
      if k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=1e-5, atol=1e-6, err_msg=k)
