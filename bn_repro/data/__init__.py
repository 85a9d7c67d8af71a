"""Datasets: in memory (MNIST, CIFAR-10) or streamed from tfds (ImageNet)."""

from bn_repro.data.imagenet import StreamingImages
STREAMED = ("imagenet2012",)  # datasets read from the host each step, not held on device
from bn_repro.data.mnist import ArrayDataset
from bn_repro.data.mnist import DATASETS
from bn_repro.data.mnist import load_splits
from bn_repro.data.mnist import pad_for_eval
from bn_repro.data.mnist import train_batch_indices
from bn_repro.data.shift import Shift, parse_shift

__all__ = ["ArrayDataset", "DATASETS", "STREAMED", "StreamingImages", "load_splits", "pad_for_eval",
           "train_batch_indices"]
