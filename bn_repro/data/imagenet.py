"""Streaming input for datasets too large for memory (ImageNet via tfds).

Examples are read on demand from a prepared tfds dataset (ArrayRecord files;
tfds decodes the JPEGs with PIL, no TensorFlow needed), cropped and resized by
a thread pool, and batched a few steps ahead. As for the in-memory datasets,
the data of training step s is a pure function of (seed, s): the example order
is `train_batch_indices` and each example's augmentation draws from
`np.random.default_rng([seed, s, j])`, j its position in the global batch. So
resuming is exact and the global batch does not depend on the number of hosts.
`data.shuffle` chooses the order: "full" (one permutation of the split per epoch, the
paper's "within-shard shuffling") or "shards" (`train_batch_indices` with num_shards:
data.shuffle_shards shards in a random order, each read in its stored order).

ImageNet needs a manual download. Put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (from image-net.org) in
`<tfds data_dir>/downloads/manual/`, where <tfds data_dir> is
config.data.tfds_data_dir (default ~/tensorflow_datasets), then prepare once
with TensorFlow installed (`pip install 'bn_repro[prepare]'`):

  tfds build imagenet2012 --data_dir=<tfds data_dir> --file_format=array_record

Augmentation: `augment.train_transform` (training) and `augment.eval_transform`.
"""

import collections
import concurrent.futures
import dataclasses
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np

from bn_repro.data import augment, mnist, splits
from bn_repro.errors import UserError


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """What the reader needs of a streamed dataset beyond its tfds name."""

  num_classes: int
  split_names: tuple[str, ...]  # With labels; imagenet2012's 'test' has none.
  manual_files: tuple[str, ...]  # Go in <data_dir>/downloads/manual/.


STREAMING_DATASETS: dict[str, StreamSpec] = {
  "imagenet2012": StreamSpec(
    num_classes=1000,
    split_names=("train", "validation"),
    manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
  ),
}


SHUFFLES = ("full", "shards")


# Batching in a thread pool.


def _fill(
  images: np.ndarray,
  labels: np.ndarray,
  i: int,
  make_example: Callable[[Any], tuple[np.ndarray, int]],
  arg: Any,
) -> None:
  images[i], labels[i] = make_example(arg)


# A batch in flight: (images, labels, mask, the futures filling its rows).
_Pending = tuple[np.ndarray, np.ndarray, np.ndarray, list[concurrent.futures.Future[None]]]


def _shut_down(
  pool: concurrent.futures.ThreadPoolExecutor, pending: collections.deque[_Pending]
) -> None:
  """Cancels the pending batches' work not yet started; joins the threads."""
  for _, _, _, futures in pending:
    for future in futures:
      future.cancel()
  pending.clear()
  pool.shutdown(wait=True, cancel_futures=True)


class BatchIterator:
  """Batches assembled by a thread pool, `prefetch` batches ahead.

  Each plan is (args, mask): one `make_example` argument per row (None for a
  padding row, left zero) and the float32 mask. Call close() (or use it as a
  context manager) to stop its threads; dropping it closes it too.
  """

  def __init__(
    self,
    plans: Iterator[tuple[list[Any], np.ndarray]],
    make_example: Callable[[Any], tuple[np.ndarray, int]],
    image_size: int,
    *,
    workers: int,
    prefetch: int,
    with_mask: bool,
  ):
    self._plans = plans
    self._make_example = make_example
    self._image_size = image_size
    self._prefetch = prefetch
    self._with_mask = with_mask
    self._pending: collections.deque[_Pending] = collections.deque()
    self._exhausted = False
    self._closed = False
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bn_repro_input")
    # Runs on close(), when collected, or at exit, whichever is first.
    self._finalizer = weakref.finalize(self, _shut_down, self._pool, self._pending)

  def _top_up(self, target: int) -> None:
    """Submits plans until `target` batches are pending."""
    while len(self._pending) < target and not self._exhausted:
      try:
        args, mask = next(self._plans)
      except StopIteration:
        self._exhausted = True
        return
      size = self._image_size
      images = np.zeros((len(args), size, size, 3), np.uint8)
      labels = np.zeros((len(args),), np.int32)
      futures = [
        self._pool.submit(_fill, images, labels, i, self._make_example, arg)
        for i, arg in enumerate(args)
        if arg is not None
      ]
      self._pending.append((images, labels, mask, futures))

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> tuple[np.ndarray, ...]:
    if self._closed:
      raise StopIteration
    try:
      self._top_up(max(1, self._prefetch))
      if not self._pending:
        raise StopIteration
      images, labels, mask, futures = self._pending.popleft()
      for future in futures:
        future.result()
      self._top_up(self._prefetch)
    except BaseException:
      self.close()
      raise
    return (images, labels, mask) if self._with_mask else (images, labels)

  def close(self) -> None:
    """Cancels the batches not yet started and joins the worker threads."""
    self._closed = True
    self._finalizer()

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# The dataset.


def _ensure_prepared(builder: Any, spec: StreamSpec) -> None:
  """Raises `UserError`, saying how to prepare, unless `builder` is readable."""
  root = os.fspath(builder.data_dir_root)
  if builder.is_prepared():
    mnist.check_array_record(
      builder,
      f"prepare it again with `tfds build {builder.name} --data_dir={root} "
      "--file_format=array_record`.",
      "config.data.tfds_data_dir",
    )
    return
  manual = os.path.join(root, "downloads", "manual")
  raise UserError(
    f"tfds dataset {builder.name} is not prepared in {root}; set"
    f" config.data.tfds_data_dir to the data_dir where it is, or put"
    f" {' and '.join(spec.manual_files)} in {manual}/ and prepare it once"
    " with TensorFlow (pip install 'bn_repro[prepare]'):"
    f" `tfds build {builder.name} --data_dir={root}"
    " --file_format=array_record`.",
    field="config.data.tfds_data_dir",
  )


def _open_split(name: str, data_dir: str, split: str, spec: StreamSpec) -> Any:
  """tfds data source (random access, decoded records) of base split `split`."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir or None)
  if not mnist.tfds_mocked():
    _ensure_prepared(builder, spec)
  return builder.as_data_source(split=split)


def _stream_spec(data_cfg: ml_collections.ConfigDict) -> StreamSpec:
  """The spec of data_cfg.name; raises `UserError` unless it is a streamed tfds dataset."""
  spec = STREAMING_DATASETS.get(data_cfg.name)
  if spec is None:
    raise UserError(
      f"{data_cfg.name!r} is not a streamed dataset; use one of {', '.join(STREAMING_DATASETS)}.",
      field="config.data.name",
    )
  if data_cfg.source != "tfds":
    raise UserError(
      f"{data_cfg.name} is read from tfds only, not {data_cfg.source!r};"
      " set --config.data.source=tfds.",
      field="config.data.source",
    )
  return spec


def _check_sizes(
  *,
  global_batch: int,
  image_size: int,
  distortion: float,
  process_index: int,
  process_count: int,
  prefetch: int,
  workers: int,
) -> None:
  """Raises unless the global batch splits over the processes and every size is in range."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch <= 0 or global_batch % process_count:
    raise UserError(
      f"global batch {global_batch} must be a positive multiple of the"
      f" {process_count} processes; change the batch size.",
      field="config.batch_size",
    )
  if image_size <= 0:
    raise UserError(
      f"image_size must be positive, got {image_size}; use e.g. 224.",
      field="config.data.image_size",
    )
  if not 0.0 <= distortion <= 1.0:
    raise UserError(
      f"distortion must be in [0, 1], got {distortion}; use 1.0 (baseline) or 0.25 (BN-x5).",
      field="config.data.distortion",
    )
  if prefetch < 0 or workers < 1:
    raise ValueError(f"need prefetch >= 0 and workers >= 1, got {prefetch} and {workers}")


def _open_range(
  data_cfg: ml_collections.ConfigDict, split: str, train: bool, spec: StreamSpec
) -> tuple[Any, int, int]:
  """The data source of `split`'s base split, and [start, stop) of `split`'s examples in it.

  Errors name the config field that holds `split` (by default the train or eval split,
  per `train`); where the configured train and eval splits slice one base split, they
  must not overlap.
  """
  fields = {
    "config.data.train_split": data_cfg.get("train_split"),
    "config.data.eval_split": data_cfg.get("eval_split"),
  }
  field = next(
    (f for f, text in fields.items() if text == split),
    "config.data.train_split" if train else "config.data.eval_split",
  )
  parsed = splits.parse_split(split, field, spec.split_names)
  source = _open_split(data_cfg.name, data_cfg.tfds_data_dir, parsed.name, spec)
  base_len = len(source)
  start, stop = parsed.resolve(base_len)
  if split in fields.values() and None not in fields.values():
    train_split, eval_split = (
      splits.parse_split(text, f, spec.split_names) for f, text in fields.items()
    )
    if train_split.name == eval_split.name == parsed.name:
      splits.check_disjoint(
        train_split, train_split.resolve(base_len), eval_split, eval_split.resolve(base_len)
      )
  return source, start, stop


class StreamingImages:
  """Batches of one host's share of the global batch, for steps from start.

  Host p of P gets the contiguous rows [p * B / P, (p + 1) * B / P) of each
  global batch of B, so concatenating the hosts' batches in process order
  gives the single-host batch exactly.
  """

  def __init__(
    self,
    data_cfg: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch: int,
    image_size: int,
    train: bool,
    seed: int,
    distortion: float,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
    workers: int = 4,
  ):
    """Opens `split` (tfds split syntax) of data_cfg.name; reads nothing yet.

    `train` selects the augmentation of `batches()`: the random one, or the
    evaluation crop (e.g. for population statistics without augmentation).
    `eval_batches()` always uses the evaluation crop.
    """
    spec = _stream_spec(data_cfg)
    _check_sizes(
      global_batch=global_batch,
      image_size=image_size,
      distortion=distortion,
      process_index=process_index,
      process_count=process_count,
      prefetch=prefetch,
      workers=workers,
    )
    self.num_classes = spec.num_classes
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.image_size = image_size
    self.train = train
    self.seed = int(seed) % 2**64
    self.distortion = float(distortion)
    self.process_index = process_index
    self.process_count = process_count
    self.prefetch = prefetch
    self.workers = workers
    self.shuffle = str(data_cfg.get("shuffle", "full"))
    self.shuffle_shards = int(data_cfg.get("shuffle_shards", 1))
    if self.shuffle not in SHUFFLES:
      raise UserError(
        f"is {self.shuffle!r}; choose one of {', '.join(SHUFFLES)}", field="config.data.shuffle"
      )
    if self.shuffle_shards < 1:
      raise UserError(
        f"is {self.shuffle_shards}; use 1 or more", field="config.data.shuffle_shards"
      )
    self._source, self._start, self._stop = _open_range(data_cfg, split, train, spec)

  def __len__(self) -> int:
    """Number of examples in the split."""
    return self._stop - self._start

  def read(self, key: int) -> tuple[np.ndarray, int]:
    """(image, label) of example `key` of the split, as tfds decodes it."""
    record = self._source[self._start + int(key)]
    return record["image"], int(record["label"])

  def _train_example(self, arg: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    key, step, j = arg
    image, label = self.read(key)
    if not self.train:
      return augment.eval_transform(image, self.image_size), label
    rng = np.random.default_rng([self.seed, step, j])
    return augment.train_transform(image, rng, self.image_size, self.distortion), label

  def _eval_example(self, key: int) -> tuple[np.ndarray, int]:
    image, label = self.read(key)
    return augment.eval_transform(image, self.image_size), label

  def _train_plans(self, start_step: int) -> Iterator[tuple[list[Any], np.ndarray]]:
    n, batch = len(self), self.global_batch
    lo = self.process_index * self.local_batch
    chunk = max(1, -(-n // batch))  # About one epoch of steps per call.
    mask = np.ones((self.local_batch,), np.float32)
    step = start_step
    while True:
      shards = min(self.shuffle_shards, n) if self.shuffle == "shards" else 0
      rows = mnist.train_batch_indices(n, batch, self.seed, step, chunk, num_shards=shards)
      for row in rows[:, lo : lo + self.local_batch]:
        yield [(key, step, lo + j) for j, key in enumerate(row)], mask
        step += 1

  def batches(self, start_step: int = 0) -> BatchIterator:
    """(images uint8 [B/P, S, S, 3], labels int32 [B/P]) for steps from start.

    Endless; close() the iterator (or use `with`) to stop its threads.
    """
    if start_step < 0:
      raise UserError(f"start_step must be >= 0, got {start_step}.")
    return BatchIterator(
      self._train_plans(start_step),
      self._train_example,
      self.image_size,
      workers=self.workers,
      prefetch=self.prefetch,
      with_mask=False,
    )

  def _eval_plans(self, batch_size: int) -> Iterator[tuple[list[Any], np.ndarray]]:
    n, local = len(self), batch_size // self.process_count
    for begin in range(0, n, batch_size):
      lo = begin + self.process_index * local
      keys = np.arange(lo, lo + local)
      yield ([int(k) if k < n else None for k in keys], (keys < n).astype(np.float32))

  def eval_batches(self, batch_size: int) -> BatchIterator:
    """(images, labels, mask) covering the split once, padded with mask 0.

    `batch_size` is global: every host yields ceil(len / batch_size) batches
    of batch_size / P rows (its contiguous share of each global batch), so
    hosts stay in step; padding rows are zero images, label 0, mask 0.
    """
    if batch_size <= 0 or batch_size % self.process_count:
      raise UserError(
        f"eval batch {batch_size} must be a positive multiple of the"
        f" {self.process_count} processes; change the eval batch size.",
        field="config.eval_batch_size",
      )
    return BatchIterator(
      self._eval_plans(batch_size),
      self._eval_example,
      self.image_size,
      workers=self.workers,
      prefetch=self.prefetch,
      with_mask=True,
    )
