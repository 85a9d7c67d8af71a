"""A run seen from outside: TensorBoard equal to metrics.jsonl after a crash and a resume,
the config in TensorBoard, what a run prints (start block, compiling, summary) where absl
shows nothing, its typed result, no lock left behind; and the refusals that keep
config.json, status.json and the checkpoints in agreement."""

import math

import numpy as np
import pytest
from idx_files import write_mnist_dir

from bn_repro import data, training, validation
from bn_repro.configs import mnist_mlp
from bn_repro.errors import UserError
from bn_repro.metrics import tensorboard_scalars
from bn_repro.rundir import RunDir


def events(step: int) -> dict[str, float]:
  return {"train/loss": 1.0 / (step + 1), "eval/accuracy": step / 100}


def board_steps(folder) -> dict[str, list[int]]:
  return {tag: [s for s, _ in v] for tag, v in tensorboard_scalars(folder).items()}


def test_resume_rebuilds_tensorboard_from_the_metrics_it_lacks(tmp_path):
  """A writer killed after step 8's events, its TensorBoard file holding step 0 only (the
  rest unflushed), resumed from the checkpoint at 4: both sinks hold 0, 4, 8, 12 as an
  uninterrupted writer's do, with the same values."""
  straight = RunDir(tmp_path / "straight")
  straight.create()
  w = straight.metric_writer()
  w.truncate_after(-1)
  for step in (0, 4, 8, 12):
    w.write(step, events(step))
  w.close()

  run = RunDir(tmp_path / "killed")
  run.create()
  w = run.metric_writer()
  w.truncate_after(-1)
  w.write(0, events(0))
  w.close()  # what reached the event file before the kill
  w = run.metric_writer(tensorboard=False)
  for step in (4, 8):
    w.write(step, events(step))  # in metrics.jsonl only
  assert board_steps(run.tensorboard_dir)["train/loss"] == [0]

  w = run.metric_writer()
  w.truncate_after(4)  # the resume
  w.write(8, events(8))
  w.write(12, events(12))
  w.close()
  assert [e["step"] for e in run.metrics()] == [0, 4, 8, 12]
  assert tensorboard_scalars(run.tensorboard_dir) == tensorboard_scalars(straight.tensorboard_dir)
  assert board_steps(run.tensorboard_dir)["eval/accuracy"] == [0, 4, 8, 12]
  assert len(list(run.tensorboard_dir.glob("events.out.tfevents.*"))) == 1


def test_a_flush_puts_every_event_in_the_file(tmp_path):
  run = RunDir(tmp_path)
  w = run.metric_writer()
  for step in range(0, 40, 4):
    w.write(step, events(step))
  w.flush()  # no close: what a SIGKILL right after a checkpoint leaves
  assert board_steps(run.tensorboard_dir)["train/loss"] == list(range(0, 40, 4))


def test_non_finite_numbers_are_refused():
  config = mnist_mlp.get_config("bn_sigmoid")
  config.optimizer.learning_rate = float("1e400")
  with pytest.raises(UserError, match="config.optimizer.learning_rate: must be a finite number"):
    validation.validate(config)
  config = mnist_mlp.get_config("bn_sigmoid")
  config.bn.epsilon = math.nan
  with pytest.raises(UserError, match="config.bn.epsilon: must be a finite number, got nan"):
    validation.validate(config)


def test_a_training_split_smaller_than_a_batch_is_refused():
  config = mnist_mlp.get_config("bn_sigmoid")
  labels = np.zeros(59, np.int64)
  with pytest.raises(UserError, match="global batch 60 is larger than the training split"):
    validation.validate_data(
      config, data.ArrayDataset(labels[:, None], labels), data.ArrayDataset(labels[:, None], labels)
    )


def test_num_steps_below_the_reached_step_is_refused(tmp_path):
  run = RunDir(tmp_path)
  (run.checkpoint_dir / "600").mkdir(parents=True)
  config = mnist_mlp.get_config("bn_sigmoid")
  config.num_steps = 600
  training.train.check_not_past_end(run, config)  # equal: the run is finished, nothing to do
  config.num_steps = 300
  with pytest.raises(UserError, match="trained to step 600, past num_steps=300; rerun with"):
    training.train.check_not_past_end(run, config)


@pytest.mark.slow
def test_a_run_in_a_notebook_prints_its_start_progress_and_summary(tmp_path, capsys):
  """train_and_evaluate outside the CLI (absl shows no INFO): the start block, compiling,
  progress and summary on stdout, in that order; a RunResult; the config in TensorBoard
  as text and HParams; every metric step in TensorBoard; no lock file left."""
  c = mnist_mlp.get_config("bn_sigmoid")
  c.model.hidden = (8,)
  c.batch_size, c.eval_batch_size, c.num_steps = 16, 40, 8
  c.log_every, c.eval_every, c.checkpoint_every = 4, 4, 4
  c.data.source, c.data.idx_dir = "idx", str(write_mnist_dir(tmp_path, train=64, test=40))
  result = training.train_and_evaluate(c, str(tmp_path / "run"))
  out = capsys.readouterr().out.splitlines()
  assert isinstance(result, training.RunResult)
  assert (result.status, result.step) == ("done", 8) and "eval/accuracy" in result.metrics
  first = [next(i for i, l in enumerate(out) if l.startswith(p)) for p in PRINTED]
  assert first == sorted(first), out
  assert out[0] == f"run: {tmp_path / 'run'}  (a new run)", out
  assert "data: mnist (idx), train 'train' 64 examples, eval 'test' 40; 2 epochs" in out

  run = RunDir(tmp_path / "run")
  assert not (run.path / RunDir.LOCK).exists() and not run.busy()
  board = board_steps(run.tensorboard_dir)
  assert board["eval/accuracy"] == [e["step"] for e in run.metrics() if "eval/accuracy" in e]
  raw = b"".join(f.read_bytes() for f in run.tensorboard_dir.glob("events.out.tfevents.*"))
  assert b"hparams" in raw and b"optimizer.learning_rate" in raw and b'"num_steps": 8' in raw


PRINTED = ("run: ", "devices: ", "data: ", "steps: ", "compiling the evaluation (step 0) ...")
PRINTED += ("compiled and ran the evaluation in ", "compiling the training program")
PRINTED += ("compiled in ", "step 4/8")
PRINTED += ("done at step 8 ", "files: ", "next: python scripts/figure1.py --bn=")
