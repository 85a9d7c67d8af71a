"""Tests for bn_repro.data: IDX reading, splits, tfds source, batch order."""

import pathlib
import socket

import ml_collections
import numpy as np
import pytest
from idx_files import fake_mnist, write_idx, write_pair

from bn_repro import configs
from bn_repro import data as data_lib
from bn_repro.configs import common
from bn_repro.data import idx, mnist, splits
from bn_repro.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
T10K = REPO.parent / "shared" / "data" / "mnist-t10k"


def config(**overrides) -> ml_collections.ConfigDict:
  values = dict(
    name="mnist", source="idx", tfds_data_dir="", idx_dir="", train_split="train", eval_split="test"
  )
  values.update(overrides)
  return ml_collections.ConfigDict(values)


@pytest.fixture
def idx_dir(tmp_path):
  """Train (20 examples, gzipped) and test (10, raw) IDX pairs."""
  train = write_pair(tmp_path, "train", 20, seed=1, gz=True)
  test = write_pair(tmp_path, "t10k", 10, seed=2, gz=False)
  return tmp_path, train, test


# IDX files.


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
  images, labels = fake_mnist(5, seed=0)
  got = idx.read_idx(write_idx(tmp_path / "i", images, 0x803, gz), 0x803)
  np.testing.assert_array_equal(got, images)
  got = idx.read_idx(write_idx(tmp_path / "l", labels, 0x801, gz), 0x801)
  np.testing.assert_array_equal(got, labels)


def test_load_splits_idx_full(idx_dir):
  directory, (train_x, train_y), (test_x, test_y) = idx_dir
  train, eval_ = data_lib.load_splits(config(idx_dir=str(directory)))
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.images.shape == (20, 28, 28, 1) and len(train) == 20
  np.testing.assert_array_equal(train.images[..., 0], train_x)
  np.testing.assert_array_equal(train.labels, train_y)
  np.testing.assert_array_equal(eval_.images[..., 0], test_x)
  np.testing.assert_array_equal(eval_.labels, test_y)


def test_load_splits_binarize(idx_dir):
  """data.binarize: pixel >= 128 -> 255 (1 after / 255), below -> 0, labels unchanged."""
  directory, (train_x, train_y), (test_x, _) = idx_dir
  train, eval_ = data_lib.load_splits(config(idx_dir=str(directory), binarize=True))
  np.testing.assert_array_equal(train.images[..., 0], np.where(train_x >= 128, 255, 0))
  np.testing.assert_array_equal(eval_.images[..., 0], np.where(test_x >= 128, 255, 0))
  np.testing.assert_array_equal(train.labels, train_y)
  assert set(np.unique(train.images)) <= {0, 255} and len(np.unique(train_x)) > 2


@pytest.mark.parametrize(
  "train_split,eval_split,train_slice,eval_slice",
  [
    ("test[:6]", "test[6:]", slice(0, 6), slice(6, 10)),
    ("test[:-3]", "test[-3:]", slice(0, 7), slice(7, 10)),
    ("test[:50%]", "test[50%:]", slice(0, 5), slice(5, 10)),
    ("test[10%:30%]", "test[-20%:]", slice(1, 3), slice(8, 10)),
    ("train[:90%]", "train[90%:]", slice(0, 18), slice(18, 20)),
  ],
)
def test_load_splits_idx_slices(idx_dir, train_split, eval_split, train_slice, eval_slice):
  directory, train_xy, test_xy = idx_dir
  x, y = test_xy if train_split.startswith("test") else train_xy
  train, eval_ = data_lib.load_splits(
    config(idx_dir=str(directory), train_split=train_split, eval_split=eval_split)
  )
  np.testing.assert_array_equal(train.images[..., 0], x[train_slice])
  np.testing.assert_array_equal(train.labels, y[train_slice])
  np.testing.assert_array_equal(eval_.images[..., 0], x[eval_slice])
  np.testing.assert_array_equal(eval_.labels, y[eval_slice])


@pytest.mark.parametrize(
  "spec",
  [
    "test",
    "test[:33%]",
    "test[33%:]",
    "test[-2:]",
    "test[:-2]",
    "test[3:5]",
    "test[10%:-10%]",
    "test[-50%:-10%]",
    "test[12.5%:]",
    "test[:7]",
    "test[-7:]",
    "test[0:1]",
  ],
)
@pytest.mark.parametrize("n", [7, 10, 100, 60000])
def test_split_resolution_matches_tfds(spec, n):
  tfds = pytest.importorskip("tensorflow_datasets")
  info = tfds.core.SplitInfo(name="test", shard_lengths=[n], num_bytes=0, filename_template=None)
  (ref,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute({"test": info})
  want = (ref.from_ or 0, n if ref.to is None else ref.to)
  parsed = splits.parse_split(spec, "f", ("train", "test"))
  if want[0] >= want[1]:
    with pytest.raises(UserError, match="selects no examples"):
      parsed.resolve(n)
  else:
    assert parsed.resolve(n) == want


@pytest.mark.parametrize(
  "bad",
  [
    "tset",
    "test[",
    "test[5]",
    "test[::2]",
    "test[a:b]",
    "test[:]",
    "test[1.5:]",
    "test[10%:5]",
    "test[:150%]",
    "test 1",
    "",
  ],
)
def test_bad_split_string(idx_dir, bad):
  directory, _, _ = idx_dir
  with pytest.raises(UserError, match="config.data.train_split") as e:
    data_lib.load_splits(config(idx_dir=str(directory), train_split=bad, eval_split="test[:1]"))
  assert repr(bad) in str(e.value)


@pytest.mark.parametrize("split", ["test[:11]", "test[-11:]", "test[5:2]"])
def test_split_out_of_range(idx_dir, split):
  directory, _, _ = idx_dir
  with pytest.raises(UserError, match="config.data.eval_split"):
    data_lib.load_splits(config(idx_dir=str(directory), eval_split=split))


@pytest.mark.parametrize(
  "train_split,eval_split",
  [
    ("test[:8]", "test[7:]"),
    ("test", "test[-1:]"),
    ("test[20%:]", "test[:30%]"),
    ("train", "train"),
  ],
)
def test_overlapping_splits_rejected(idx_dir, train_split, eval_split):
  directory, _, _ = idx_dir
  with pytest.raises(UserError, match="config.data.eval_split.*overlaps"):
    data_lib.load_splits(
      config(idx_dir=str(directory), train_split=train_split, eval_split=eval_split)
    )


def test_wrong_magic(idx_dir):
  directory, _, (x, _) = idx_dir
  write_idx(directory / "t10k-images-idx3-ubyte", x, 0x801)
  with pytest.raises(UserError, match="t10k-images-idx3-ubyte is not a valid"):
    data_lib.load_splits(config(idx_dir=str(directory)))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(idx_dir, gz):
  directory, _, _ = idx_dir
  name = "t10k-labels-idx1-ubyte"
  (directory / name).unlink()
  path = directory / (name + (".gz" if gz else ""))
  full = write_idx(path, np.zeros(10, np.uint8), 0x801, gz).read_bytes()
  path.write_bytes(full[:-3])
  with pytest.raises(UserError, match=f"{name}.* is not a valid IDX file"):
    data_lib.load_splits(config(idx_dir=str(directory)))


def test_count_mismatch(idx_dir):
  directory, _, _ = idx_dir
  write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8), 0x801)
  with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is not a valid.*9 labels"):
    data_lib.load_splits(config(idx_dir=str(directory)))


@pytest.mark.parametrize("count", [9, 11])
def test_header_count_disagrees_with_data(idx_dir, count):
  directory, _, (x, _) = idx_dir
  write_idx(directory / "t10k-images-idx3-ubyte", x, 0x803, count=count)
  with pytest.raises(UserError, match="t10k-images-idx3-ubyte is not a valid"):
    data_lib.load_splits(config(idx_dir=str(directory)))


def test_label_out_of_range(idx_dir):
  directory, _, _ = idx_dir
  write_idx(directory / "t10k-labels-idx1-ubyte", np.full(10, 10, np.uint8), 0x801)
  with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is not a valid"):
    data_lib.load_splits(config(idx_dir=str(directory)))


def test_missing_dir(tmp_path):
  with pytest.raises(UserError, match="config.data.idx_dir.*nope.*train-images"):
    data_lib.load_splits(config(idx_dir=str(tmp_path / "nope")))
  with pytest.raises(
    UserError,
    match=r"config.data.idx_dir: is empty; set BN_REPRO_MNIST_DIR .*or --config.data.idx_dir=DIR",
  ):
    data_lib.load_splits(config(idx_dir=""))


def test_missing_file(idx_dir):
  directory, _, _ = idx_dir
  (directory / "train-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(UserError, match="config.data.idx_dir.*train-labels-idx1"):
    data_lib.load_splits(config(idx_dir=str(directory)))


def test_bad_name_and_source():
  with pytest.raises(UserError, match="config.data.name"):
    data_lib.load_splits(config(name="mnits"))
  with pytest.raises(UserError, match="config.data.source"):
    data_lib.load_splits(config(source="hdf5"))


@pytest.mark.skipif(not T10K.is_dir(), reason="no MNIST t10k files")
def test_real_mnist_t10k(monkeypatch):
  """The t10k preset on the real files: 8,000 train and 2,000 eval images."""
  monkeypatch.setenv(common.MNIST_DIR_ENV, str(T10K))
  train, eval_ = data_lib.load_splits(configs.get("mnist_mlp:t10k").data)
  assert len(train) == 8000 and len(eval_) == 2000
  for ds in (train, eval_):
    assert ds.images.shape[1:] == (28, 28, 1) and ds.images.dtype == np.uint8
    assert set(np.unique(ds.labels)) == set(range(10))
  assert train.labels[0] == 7
  assert 0 < train.images.mean() < 255


# tfds source.


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    train, eval_ = data_lib.load_splits(
      config(source="tfds", train_split="train[:75%]", eval_split="test")
    )
  assert train.images.shape == (9, 28, 28, 1) and len(eval_) == 12
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert ((train.labels >= 0) & (train.labels < 10)).all()


@pytest.mark.parametrize("tf_available,network", [(False, True), (True, False)])
def test_tfds_unprepared_raises(tmp_path, monkeypatch, tf_available, network):
  tfds = pytest.importorskip("tensorflow_datasets")

  def no_download(*args, **kwargs):
    raise AssertionError("must not try to download")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  monkeypatch.setattr(mnist, "tensorflow_available", lambda: tf_available)
  monkeypatch.setattr(mnist, "network_reachable", lambda *a, **k: network)
  with pytest.raises(UserError, match="config.data.source.*not prepared") as e:
    data_lib.load_splits(config(source="tfds", tfds_data_dir=str(tmp_path)))
  assert str(tmp_path) in str(e.value) and "idx_dir" in str(e.value)


def test_network_reachable_local():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert mnist.network_reachable("127.0.0.1", port, timeout=1.0)
  assert not mnist.network_reachable("127.0.0.1", port, timeout=1.0)


# Training order.


def reference_stream(n: int, batch_size: int, seed: int, num_steps: int) -> np.ndarray:
  """Epoch after epoch of default_rng([seed, e]).permutation(n); a batch left open at an
  epoch's end is filled with the next epoch's first examples it does not hold yet (the
  ones skipped stay first in line)."""
  stream: list[int] = []
  e = 0
  while len(stream) < num_steps * batch_size:
    line = [int(k) for k in np.random.default_rng([seed, e]).permutation(n)]
    open_batch = stream[len(stream) - len(stream) % batch_size :]
    while line and len(stream) % batch_size:
      k = next((k for k in line if k not in open_batch), None)
      assert k is not None, "the split cannot fill the batch without a repeat"
      line.remove(k)
      stream.append(k)
      open_batch.append(k)
    stream.extend(line)
    e += 1
  return np.array(stream[: num_steps * batch_size]).reshape(num_steps, batch_size)


@pytest.mark.parametrize("n,batch_size", [(10, 4), (10, 10), (10, 5), (25, 10), (100, 3), (50, 8)])
def test_train_batch_indices_epochs_are_permutations_and_batches_never_repeat(n, batch_size):
  got = data_lib.train_batch_indices(n, batch_size, seed=3, start_step=0, num_steps=40)
  assert got.shape == (40, batch_size) and got.dtype == np.int32
  flat = got.reshape(-1)
  for start in range(0, len(flat) - n + 1, n):
    np.testing.assert_array_equal(np.sort(flat[start : start + n]), np.arange(n))
  for batch in got:
    assert len(set(batch.tolist())) == batch_size, batch
  np.testing.assert_array_equal(got, reference_stream(n, batch_size, 3, 40))


def test_the_t10k_batches_across_epoch_boundaries_never_repeat():
  """8,000 examples in batches of 60: a batch across every third epoch boundary."""
  got = data_lib.train_batch_indices(8000, 60, seed=0, start_step=0, num_steps=50_000)
  ordered = np.sort(got, axis=1)
  assert not (ordered[:, 1:] == ordered[:, :-1]).any()
  plain = np.concatenate([np.random.default_rng([0, e]).permutation(8000) for e in range(375)])
  changed = (got.reshape(-1) != plain[: got.size]).reshape(got.shape).any(axis=1)
  # Only batches at an epoch boundary differ from the plain concatenation, and not all of them.
  boundary = {s for s in range(50_000) if (s * 60) // 8000 != ((s + 1) * 60 - 1) // 8000}
  assert set(np.flatnonzero(changed)) <= boundary | {s + 1 for s in boundary}
  assert 0 < changed.sum() < len(boundary)


@pytest.mark.parametrize(
  "n,batch_size,expect",
  [(7, 32, "larger than the training split"), (10, 6, "fewer than two batches")],
)
def test_train_batch_indices_refuses_a_batch_that_would_repeat_examples(n, batch_size, expect):
  with pytest.raises(UserError, match=expect):
    data_lib.train_batch_indices(n, batch_size, seed=0, start_step=0, num_steps=3)


def test_train_batch_indices_deterministic_and_resumable():
  full = data_lib.train_batch_indices(50, 8, seed=7, start_step=0, num_steps=40)
  np.testing.assert_array_equal(
    full, data_lib.train_batch_indices(50, 8, seed=7, start_step=0, num_steps=40)
  )
  for start, count in [(0, 1), (5, 10), (13, 27), (39, 1), (20, 0)]:
    got = data_lib.train_batch_indices(50, 8, seed=7, start_step=start, num_steps=count)
    np.testing.assert_array_equal(got, full[start : start + count])


def test_train_batch_indices_seeds_differ():
  a = data_lib.train_batch_indices(1000, 10, seed=0, start_step=0, num_steps=5)
  b = data_lib.train_batch_indices(1000, 10, seed=1, start_step=0, num_steps=5)
  assert (a != b).mean() > 0.9


def test_train_batch_indices_large():
  got = data_lib.train_batch_indices(60000, 100, seed=0, start_step=1000, num_steps=30200)
  assert got.shape == (30200, 100)
  # Steps 30600..31199 are exactly epoch 51.
  np.testing.assert_array_equal(
    np.bincount(got[-600:].reshape(-1), minlength=60000), np.ones(60000)
  )


def test_train_batch_indices_bad_args():
  with pytest.raises(UserError):
    data_lib.train_batch_indices(0, 8, 0, 0, 1)
  with pytest.raises(UserError):
    data_lib.train_batch_indices(10, 0, 0, 0, 1)


# Eval padding.


@pytest.mark.parametrize("n,multiple,padded", [(10, 4, 12), (8, 4, 8), (3, 8, 8), (0, 4, 0)])
def test_pad_for_eval(n, multiple, padded):
  rng = np.random.default_rng(0)
  ds = data_lib.ArrayDataset(
    rng.integers(1, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, (n,)).astype(np.int32)
  )
  images, labels, mask = data_lib.pad_for_eval(ds, multiple)
  assert images.shape == (padded, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (padded,) and labels.dtype == np.int32
  assert mask.shape == (padded,) and mask.dtype == np.float32
  assert mask.sum() == n
  np.testing.assert_array_equal(mask, np.arange(padded) < n)
  np.testing.assert_array_equal(images[:n], ds.images)
  np.testing.assert_array_equal(labels[:n], ds.labels)
  assert not images[n:].any() and not labels[n:].any()
