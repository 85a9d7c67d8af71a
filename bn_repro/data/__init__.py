"""Datasets as in-memory numpy arrays, and the order training reads them."""

from bn_repro.data.mnist import ArrayDataset
from bn_repro.data.mnist import load_splits
from bn_repro.data.mnist import pad_for_eval
from bn_repro.data.mnist import train_batch_indices

__all__ = ["ArrayDataset", "load_splits", "pad_for_eval", "train_batch_indices"]
