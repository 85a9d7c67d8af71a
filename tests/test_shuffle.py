"""The training order without within-shard shuffling (data.train_batch_indices, num_shards); the
streamed reader's use of it: tests/test_imagenet_input.py."""

import numpy as np
import pytest

from bn_repro.data import mnist
from bn_repro.errors import UserError


def reference(n, batch, seed, start, steps, shards):
  """Epoch by epoch: shards (np.array_split) in default_rng([seed, e])'s order, in place."""
  stream, e = [], 0
  while len(stream) < (start + steps) * batch:
    order = np.random.default_rng([seed, e]).permutation(shards)
    parts = np.array_split(np.arange(n), shards)
    stream.extend(int(k) for i in order for k in parts[i])
    e += 1
  return np.array(stream[start * batch : (start + steps) * batch]).reshape(steps, batch)


@pytest.mark.parametrize("n,batch,start,steps,shards", [(23, 4, 0, 12, 5), (23, 4, 7, 9, 3)])
def test_shards_in_a_random_order_each_read_in_storage_order(n, batch, start, steps, shards):
  got = mnist.train_batch_indices(n, batch, 3, start, steps, num_shards=shards)
  np.testing.assert_array_equal(got, reference(n, batch, 3, start, steps, shards))


def test_every_epoch_sees_each_example_once_and_neighbours_stay_together():
  n, shards = 120, 12
  idx = mnist.train_batch_indices(n, 10, 0, 0, 36, num_shards=shards).reshape(3, n)  # three epochs
  for epoch in idx:
    assert sorted(epoch) == list(range(n))
  # Batches of 10 are the 12 shards of 10: the same groups every epoch.
  groups = [{frozenset(b) for b in epoch.reshape(-1, 10)} for epoch in idx]
  assert groups[0] == groups[1] == groups[2]
  full = mnist.train_batch_indices(n, 10, 0, 0, 36).reshape(3, n)
  assert {frozenset(b) for b in full[0].reshape(-1, 10)} != {
    frozenset(b) for b in full[1].reshape(-1, 10)
  }


def test_bad_shard_count():
  with pytest.raises(UserError, match="shuffle_shards"):
    mnist.train_batch_indices(10, 2, 0, 0, 1, num_shards=11)
