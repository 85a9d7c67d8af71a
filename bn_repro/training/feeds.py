"""Data feeds: what the host sends to the devices for each chunk of steps and each eval.

A dataset that fits sits in device memory (uint8) and the host sends only example
indices (`InMemoryFeed`); a large one is streamed from the host (`StreamFeed`). Either
way the order of examples is a pure function of (seed, step)
(`data.train_batch_indices`), so the step is the data position and a resumed run sees
exactly the batches an uninterrupted one would.
"""

import math

import jax
import numpy as np

from bn_repro import data, parallel


class InMemoryFeed:
  """A dataset held in device memory (uint8); the host sends example indices only."""

  def __init__(self, config, train_ds: data.ArrayDataset, eval_ds: data.ArrayDataset, devs):
    self.config, self.devs = config, devs
    # Several processes (hosts): each holds the dataset and takes its slice of every global
    # batch and of the eval set; collectives over AXIS span all processes' devices.
    self.process, self.processes = jax.process_index(), jax.process_count()
    self.num_train = len(train_ds)
    self.sample_images = train_ds.images[:2]
    self.dataset = parallel.replicate((train_ds.images, train_ds.labels), devs)
    self.eval_data = self._eval_layout(eval_ds)
    # The first eval_train_examples training examples, evaluated like the eval set
    # (population statistics, no dropout): the train side of the train-test gap.
    n_train_eval = min(config.eval_train_examples, len(train_ds))
    self.train_eval_data = (
      self._eval_layout(
        data.ArrayDataset(train_ds.images[:n_train_eval], train_ds.labels[:n_train_eval])
      )
      if n_train_eval
      else None
    )

  def _eval_layout(self, ds: data.ArrayDataset):
    """Every example once, padding with mask 0; layout [device, batch index, example]."""
    n = len(self.devs)
    world = n * self.processes
    per_device = max(1, min(self.config.eval_batch_size // world, math.ceil(len(ds) / world)))
    images, labels, mask = data.pad_for_eval(ds, world * per_device)
    part = lambda a: np.split(a, self.processes)[self.process]
    shape = lambda a: part(a).reshape((n, -1, per_device) + a.shape[1:])
    return parallel.shard((shape(images), shape(labels), shape(mask)), self.devs)

  def indices(self, seed: int, start: int, steps: int) -> jax.Array:
    """[device, step, local example] training indices: this process's slice of each batch."""
    idx = data.train_batch_indices(self.num_train, self.config.batch_size, seed, start, steps)
    idx = np.split(idx, self.processes, axis=1)[self.process]
    return parallel.shard(idx.reshape(steps, len(self.devs), -1).transpose(1, 0, 2), self.devs)

  def train_inputs(self, start: int, steps: int):
    return self.dataset, self.indices(self.config.seed, start, steps)

  def eval_inputs(self, train: bool = False):
    if train:
      if self.train_eval_data is not None:
        yield self.train_eval_data
    else:
      yield self.eval_data

  def close(self):
    pass


class StreamFeed:
  """Batches streamed from the host (datasets that do not fit in device memory)."""

  def __init__(self, config, devs):
    self.config, self.devs = config, devs
    kw = dict(
      global_batch=config.batch_size,
      image_size=config.data.image_size,
      seed=config.seed,
      distortion=config.data.distortion,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    self.train_stream = data.StreamingImages(
      config.data, split=config.data.train_split, train=True, **kw
    )
    self.eval_stream = data.StreamingImages(
      config.data, split=config.data.eval_split, train=False, **kw
    )
    self.num_train = len(self.train_stream)
    size = config.data.image_size
    self.sample_images = np.zeros((2, size, size, 3), np.uint8)
    self._it, self._next = None, None

  def _to_devices(self, *arrays):
    """[step, local batch, ...] host arrays to [device, step, per-device batch, ...]."""
    n = len(self.devs)
    return parallel.shard(
      tuple(np.swapaxes(a.reshape((a.shape[0], n, -1) + a.shape[2:]), 0, 1) for a in arrays),
      self.devs,
    )

  def train_inputs(self, start: int, steps: int):
    if self._next != start:
      self.close()
      self._it = self.train_stream.batches(start)
    batches = [next(self._it) for _ in range(steps)]
    self._next = start + steps
    return (), self._to_devices(
      np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
    )

  def eval_inputs(self, train: bool = False):
    if train:  # validation refuses eval_train_examples for streamed datasets
      return
    with self.eval_stream.eval_batches(self.config.eval_batch_size) as it:
      for images, labels, mask in it:
        yield self._to_devices(images[None], labels[None], mask[None])

  def close(self):
    if self._it is not None:
      self._it.close()
      self._it, self._next = None, None
