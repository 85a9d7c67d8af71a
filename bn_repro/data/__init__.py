"""Datasets: in memory (MNIST, CIFAR-10) or streamed from tfds (ImageNet)."""

from bn_repro.data.imagenet import StreamingImages
from bn_repro.data.mnist import (
  DATASETS,
  ArrayDataset,
  check_batch_fits,
  load_splits,
  pad_for_eval,
  train_batch_indices,
)
from bn_repro.data.shift import Shift, parse_shift

STREAMED = ("imagenet2012",)  # datasets read from the host each step, not held on device

__all__ = [
  "DATASETS",
  "STREAMED",
  "ArrayDataset",
  "Shift",
  "StreamingImages",
  "check_batch_fits",
  "load_splits",
  "pad_for_eval",
  "parse_shift",
  "train_batch_indices",
]
