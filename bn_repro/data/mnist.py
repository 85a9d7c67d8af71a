"""In-memory datasets (MNIST, CIFAR-10) from IDX or tfds, plus batch order.

Everything is numpy: the whole dataset is held in host memory, and the training
stream is a pure function of (seed, step) so that resuming is exact. tfds is
imported lazily, only on the tfds path.
"""

import dataclasses
import importlib.util
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from bn_repro.configs.common import MNIST_DIR_ENV
from bn_repro.data import idx, splits
from bn_repro.errors import UserError

_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What we need to know about a dataset beyond its tfds name."""

  image_shape: tuple[int, int, int]
  num_classes: int
  split_names: tuple[str, ...]
  idx_prefixes: Mapping[str, str]  # split name -> IDX file prefix; {} = none.
  download_host: str  # Probed before a tfds download.


DATASETS: dict[str, DatasetSpec] = {
  "mnist": DatasetSpec(
    image_shape=(28, 28, 1),
    num_classes=10,
    split_names=("train", "test"),
    idx_prefixes={"train": "train", "test": "t10k"},
    download_host="storage.googleapis.com",
  ),
  "cifar10": DatasetSpec(
    image_shape=(32, 32, 3),
    num_classes=10,
    split_names=("train", "test"),
    idx_prefixes={},
    download_host="www.cs.toronto.edu",
  ),
}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """A labelled image dataset held in memory."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

  def __len__(self) -> int:
    return len(self.labels)


def load_splits(data: ml_collections.ConfigDict) -> tuple[ArrayDataset, ArrayDataset]:
  """(train, eval) for data.name from data.source."""
  spec = DATASETS.get(data.name)
  if spec is None:
    raise UserError(
      f"unknown dataset {data.name!r}; use one of {', '.join(DATASETS)}.", field="config.data.name"
    )
  if data.source not in ("tfds", "idx"):
    raise UserError(
      f"unknown source {data.source!r}; use 'tfds' or 'idx'.", field="config.data.source"
    )
  if data.source == "idx" and not spec.idx_prefixes:
    raise UserError(
      f"dataset {data.name!r} has no IDX files; set --config.data.source=tfds.",
      field="config.data.source",
    )
  train = splits.parse_split(data.train_split, "config.data.train_split", spec.split_names)
  eval_ = splits.parse_split(data.eval_split, "config.data.eval_split", spec.split_names)
  names = tuple(dict.fromkeys((train.name, eval_.name)))
  bases: Mapping[str, ArrayDataset | _TfdsSplit]
  if data.source == "idx":
    bases = {n: _load_idx_base(data.idx_dir, n, spec) for n in names}
  else:
    bases = _tfds_sources(data.name, data.tfds_data_dir, names, spec)
  train_range = train.resolve(len(bases[train.name]))
  eval_range = eval_.resolve(len(bases[eval_.name]))
  splits.check_disjoint(train, train_range, eval_, eval_range)
  train_ds = _take(bases[train.name], train_range, spec)
  eval_ds = _take(bases[eval_.name], eval_range, spec)
  if data.get("binarize", False):
    train_ds, eval_ds = binarize(train_ds), binarize(eval_ds)
  return train_ds, eval_ds


BINARY_THRESHOLD = 128  # data.binarize: a pixel >= this (0.5 of full scale) becomes 1


def binarize(ds: ArrayDataset) -> ArrayDataset:
  """The paper's "28x28 binary image": pixels >= BINARY_THRESHOLD to 255, the others to 0
  (the trainer's pixel / 255 then gives 1 and 0)."""
  images = np.where(ds.images >= BINARY_THRESHOLD, 255, 0).astype(np.uint8)
  return ArrayDataset(images, ds.labels)


@dataclasses.dataclass(frozen=True)
class _TfdsSplit:
  """A base split of a tfds data source, read lazily by `_take`."""

  source: Any
  batched: bool  # False under tfds.testing.mock_data: its __getitems__ breaks.

  def __len__(self) -> int:
    return len(self.source)


def _take(
  base: ArrayDataset | _TfdsSplit, bounds: tuple[int, int], spec: DatasetSpec
) -> ArrayDataset:
  """Examples [start, stop) of a base split, as arrays."""
  start, stop = bounds
  if isinstance(base, ArrayDataset):
    return ArrayDataset(base.images[start:stop], base.labels[start:stop])
  images = np.empty((stop - start, *spec.image_shape), np.uint8)
  labels = np.empty((stop - start,), np.int32)
  for chunk in range(start, stop, _READ_CHUNK):
    keys = list(range(chunk, min(chunk + _READ_CHUNK, stop)))
    if base.batched:
      records = base.source.__getitems__(keys)
    else:
      records = [base.source[k] for k in keys]
    for key, record in zip(keys, records):
      images[key - start] = record["image"]
      labels[key - start] = record["label"]
  return ArrayDataset(images, labels)


def _idx_file(directory: str, name: str) -> str | None:
  for candidate in (name + ".gz", name):
    path = epath.Path(directory) / candidate
    if path.is_file():
      return os.fspath(path)
  return None


def _load_idx_base(directory: str, split: str, spec: DatasetSpec) -> ArrayDataset:
  """Whole base split `split` from the IDX files in `directory`."""
  prefix = spec.idx_prefixes.get(split)
  if prefix is None:
    raise UserError(
      f"split {split!r} has no IDX files; set --config.data.source=tfds.",
      field="config.data.source",
    )
  names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
  wanted = " and ".join(f"{n}[.gz]" for n in names)
  if not directory:
    raise UserError(
      f"is empty; set {MNIST_DIR_ENV} (read by the t10k preset) or --config.data.idx_dir=DIR"
      f" to a directory holding {wanted}.",
      field="config.data.idx_dir",
    )
  try:
    found = epath.Path(directory).is_dir()  # a local directory or a gs:// prefix
  except Exception as e:  # a cloud client's own errors: network, credentials
    raise UserError(
      f"cannot read {directory!r} ({type(e).__name__}); check the bucket's name, the network "
      "and the credentials",
      field="config.data.idx_dir",
    ) from None
  if not found:
    raise UserError(
      f"directory {directory!r} does not exist; set it to a directory holding {wanted}.",
      field="config.data.idx_dir",
    )
  image_path, label_path = (_idx_file(directory, n) for n in names)
  if image_path is None or label_path is None:
    raise UserError(
      f"{directory!r} lacks the files for split {split!r}; it needs {wanted}.",
      field="config.data.idx_dir",
    )
  images, labels = idx.read_image_label_pair(
    image_path, label_path, spec.image_shape, spec.num_classes
  )
  return ArrayDataset(images, labels)


def tfds_mocked() -> bool:
  """Whether `tfds.testing.mock_data` is active (its data is never prepared)."""
  import tensorflow_datasets as tfds

  method = tfds.core.DatasetBuilder.download_and_prepare
  return getattr(method, "__module__", "").startswith("tensorflow_datasets.testing")


def tensorflow_available() -> bool:
  """Whether TensorFlow is installed (preparing a tfds dataset needs it)."""
  return importlib.util.find_spec("tensorflow") is not None


def network_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
  """Whether `host:port` accepts a TCP connection within about `timeout` s."""
  result = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout + 1.0)
  return bool(result)


def check_array_record(builder: Any, fix: str, field: str) -> None:
  """Raises `UserError` unless a prepared `builder` is in ArrayRecord format (which reads
  without TensorFlow)."""
  file_format = builder.info.file_format
  if file_format is not None and file_format.value != "array_record":
    raise UserError(
      f"{builder.name} in {builder.data_dir} is prepared as {file_format.value}, which tfds "
      f"cannot read without TensorFlow; {fix}",
      field=field,
    )


def _ensure_prepared(builder: Any, spec: DatasetSpec) -> None:
  """Prepares `builder` if it can do so; raises `UserError` rather than hang."""
  if builder.is_prepared():
    check_array_record(
      builder,
      "prepare it with file_format='array_record'"
      + (" or set --config.data.source=idx." if spec.idx_prefixes else "."),
      "config.data.source",
    )
    return
  if not tensorflow_available():
    reason = "preparing it needs TensorFlow (pip install 'bn_repro[prepare]')"
  elif not network_reachable(spec.download_host):
    reason = f"preparing it needs a network ({spec.download_host} is unreachable)"
  else:
    builder.download_and_prepare(file_format="array_record")
    return
  raise UserError(
    f"tfds dataset {builder.name} is not prepared in {builder.data_dir} and"
    f" {reason}; prepare it on a machine with TensorFlow and a network"
    + (
      ", or set --config.data.source=idx --config.data.idx_dir=<dir of IDX files>."
      if spec.idx_prefixes
      else " and set --config.data.tfds_data_dir to its data_dir."
    ),
    field="config.data.source",
  )


def _tfds_sources(
  name: str, data_dir: str, split_names: tuple[str, ...], spec: DatasetSpec
) -> dict[str, _TfdsSplit]:
  """Base splits of a prepared (ArrayRecord) tfds dataset, not yet read."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir or None)
  mocked = tfds_mocked()
  if not mocked:
    _ensure_prepared(builder, spec)
  return {
    split: _TfdsSplit(builder.as_data_source(split=split), not mocked) for split in split_names
  }


def check_batch_fits(num_examples: int, batch_size: int, split: str = "") -> None:
  """Refuses a batch that would hold an example twice: one larger than the training split,
  or one across an epoch boundary of a split of fewer than two batches (train_batch_indices
  keeps every boundary batch of a larger split free of repeats)."""
  where = f"training split {split!r}" if split else "training split"
  if batch_size > num_examples:
    raise UserError(
      f"global batch {batch_size} is larger than the {where} ({num_examples} examples), so "
      f"every step would repeat examples; use --config.batch_size <= {num_examples} or a "
      "larger --config.data.train_split",
      field="config.batch_size",
    )
  if num_examples % batch_size and num_examples < 2 * batch_size:
    raise UserError(
      f"global batch {batch_size} does not divide the {where} ({num_examples} examples), "
      "which holds fewer than two batches, so the batch across each epoch boundary would "
      f"repeat examples; use --config.batch_size={num_examples}, or at most "
      f"{num_examples // 2}",
      field="config.batch_size",
    )


def _epoch_order(num_examples: int, seed: int, epoch: int, num_shards: int) -> np.ndarray:
  """Epoch `epoch`'s order before train_batch_indices' boundary rule."""
  rng = np.random.default_rng([seed, epoch])
  if not num_shards:
    return rng.permutation(num_examples).astype(np.int32)
  shards = np.array_split(np.arange(num_examples, dtype=np.int32), num_shards)
  return np.concatenate([shards[i] for i in rng.permutation(num_shards)])


def _boundary_free(order: np.ndarray, tail: np.ndarray, head: int) -> np.ndarray:
  """`order` with its first `head` examples the first `head` not in `tail`, the examples
  they pass moved just after them (the rest in place)."""
  clash = np.isin(order, tail)
  if not clash[:head].any():
    return order
  first = np.flatnonzero(~clash)[:head]
  rest = np.ones(len(order), bool)
  rest[first] = False
  return np.concatenate([order[first], order[rest]])


def train_batch_indices(
  num_examples: int,
  batch_size: int,
  seed: int,
  start_step: int,
  num_steps: int,
  num_shards: int = 0,
) -> np.ndarray:
  """int32 [num_steps, batch_size]: example indices for steps from start_step.

  The stream concatenates per-epoch orders, so no example is dropped, every epoch
  (num_examples consecutive positions from a multiple of num_examples) holds each example
  once, no batch holds one twice, and each step depends only on (seed, step). Epoch e's
  order is default_rng([seed, e]).permutation(num_examples); with num_shards > 0 (no
  within-shard shuffling), the examples cut into that many contiguous shards (np.array_split's
  sizes), the shards in the order default_rng([seed, e]).permutation(num_shards), each read
  from its first example to its last, so that neighbours in storage share batches every
  epoch. Where a batch spans epochs e - 1 and e, epoch e's order starts with its first
  examples that are not in epoch e - 1's part of that batch, the ones they pass coming right
  after them: a change within the first batch of epoch e, so that the batch repeats no
  example (check_batch_fits refuses the splits where no such order exists).
  """
  if not 0 < num_examples < 2**31:
    raise UserError(
      f"num_examples must be in 1..2**31-1, got {num_examples}; use a non-empty training split."
    )
  if batch_size <= 0 or start_step < 0 or num_steps < 0:
    raise UserError(
      f"need batch_size > 0, start_step >= 0 and num_steps >= 0, got"
      f" {batch_size}, {start_step}, {num_steps}; fix the batch size or"
      " step counts."
    )
  if not 0 <= num_shards <= num_examples:
    raise UserError(
      f"{num_shards} shards for {num_examples} examples; use 1 to {num_examples}",
      field="config.data.shuffle_shards",
    )
  check_batch_fits(num_examples, batch_size)
  seed = int(seed) % 2**64
  begin = start_step * batch_size
  end = begin + num_steps * batch_size
  out = np.empty((end - begin,), np.int32)
  previous = None  # the epoch before's order (its last batch_size examples are its own)
  for epoch in range(begin // num_examples, -(-end // num_examples)):
    lo = max(begin, epoch * num_examples)
    hi = min(end, (epoch + 1) * num_examples)
    order = base = _epoch_order(num_examples, seed, epoch, num_shards)
    tail = epoch * num_examples % batch_size  # epoch - 1's part of the batch across the start
    if epoch and tail:
      if previous is None:
        previous = _epoch_order(num_examples, seed, epoch - 1, num_shards)
      order = _boundary_free(base, previous[-tail:], batch_size - tail)
    previous = base
    out[lo - begin : hi - begin] = order[lo - epoch * num_examples : hi - epoch * num_examples]
  return out.reshape(num_steps, batch_size)


def pad_for_eval(ds: ArrayDataset, multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, mask): padded with zeros to a multiple of `multiple`.

  mask is float32, 1 for real examples and 0 for padding, so evaluation can
  see each example exactly once in fixed-size batches.
  """
  if multiple <= 0:
    raise UserError(f"multiple must be positive, got {multiple}; use the eval batch size.")
  n = len(ds)
  pad = -n % multiple
  images = np.concatenate([ds.images, np.zeros((pad, *ds.images.shape[1:]), ds.images.dtype)])
  labels = np.concatenate([ds.labels, np.zeros((pad,), ds.labels.dtype)])
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  return images, labels, mask
