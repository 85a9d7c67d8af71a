"""The streamed-input path of the trainer (ImageNet-style), on tfds mock data."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bn_repro import training
from bn_repro.configs import inception_small
from bn_repro.rundir import RunDir


def tiny_imagenet_config():
  c = inception_small.get_config("bn_x5")
  c.data.name = "imagenet2012"
  c.data.train_split, c.data.eval_split = "train", "validation"
  c.data.image_size = 32
  c.model.num_classes = 1000
  c.model.modules = ("3a",)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_steps = 4
  c.steps_per_call = 2
  c.log_every = c.eval_every = c.checkpoint_every = 2
  c.tensorboard = False
  return c


@pytest.mark.slow
def test_streamed_imagenet_trains_evaluates_and_resumes(tmp_path):
  c = tiny_imagenet_config()
  with tfds.testing.mock_data(num_examples=20):
    training.train_and_evaluate(c, str(tmp_path / "straight"))
    c2 = tiny_imagenet_config()
    c2.num_steps = 2
    training.train_and_evaluate(c2, str(tmp_path / "resumed"))
    training.train_and_evaluate(c, str(tmp_path / "resumed"))
  a, b = RunDir(tmp_path / "straight").metrics(), RunDir(tmp_path / "resumed").metrics()
  assert [e["step"] for e in a] == [0, 2, 4] == [e["step"] for e in b]
  evals = [e for e in a if "eval/accuracy" in e]
  # 20 eval examples, each seen once: accuracies are multiples of 1/20.
  for e in evals:
    assert abs(e["eval/accuracy"] * 20 - round(e["eval/accuracy"] * 20)) < 1e-6
    assert np.isfinite(e["eval/loss"]) and 0 <= e["eval/top5"] <= 1
  for ea, eb in zip(a, b):
    for k in ("train/loss", "eval/loss"):
      if k in ea:
        np.testing.assert_allclose(eb[k], ea[k], rtol=1e-6)
  assert json.loads((tmp_path / "straight" / "status.json").read_text())["status"] == "done"
