"""Tests for the streamed ImageNet input (tfds mock) and CIFAR-10 loading."""

import gc
import threading

import ml_collections
import numpy as np
import pytest
from PIL import Image

from bn_repro import data as data_lib
from bn_repro.data import augment, imagenet, mnist
from bn_repro.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")

NUM_EXAMPLES = 20
SIZE = 24


def config(**overrides) -> ml_collections.ConfigDict:
  values = dict(
    name="imagenet2012",
    source="tfds",
    tfds_data_dir="",
    idx_dir="",
    train_split="train",
    eval_split="validation",
  )
  values.update(overrides)
  return ml_collections.ConfigDict(values)


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield


def stream(cfg=None, **overrides) -> imagenet.StreamingImages:
  kwargs = dict(
    split="train", global_batch=8, image_size=SIZE, train=True, seed=3, distortion=1.0, workers=2
  )
  kwargs.update(overrides)
  return imagenet.StreamingImages(cfg or config(), **kwargs)


def take(ds: imagenet.StreamingImages, start_step: int, count: int) -> list:
  with ds.batches(start_step) as it:
    return [next(it) for _ in range(count)]


def input_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name.startswith("bn_repro_input")]


def test_train_shapes_and_dtypes(mock):
  ds = stream()
  assert len(ds) == NUM_EXAMPLES and ds.num_classes == 1000
  for images, labels in take(ds, 0, 3):
    assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.shape == (8,) and labels.dtype == np.int32
    assert ((labels >= 0) & (labels < 1000)).all()
    assert images.std() > 0


def test_deterministic_per_seed_and_step(mock):
  a = take(stream(), 0, 3)
  b = take(stream(prefetch=0, workers=1), 0, 3)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert not np.array_equal(a[0][0], a[1][0])
  other_seed = take(stream(seed=4), 0, 1)[0]
  assert not np.array_equal(a[0][0], other_seed[0])


def test_host_slices_concatenate_to_global_batch(mock):
  whole = take(stream(), 2, 2)
  hosts = [take(stream(process_index=p, process_count=2), 2, 2) for p in range(2)]
  for step in range(2):
    for part in range(2):  # images, labels
      np.testing.assert_array_equal(
        np.concatenate([hosts[p][step][part] for p in range(2)]), whole[step][part]
      )
  assert hosts[0][0][0].shape == (4, SIZE, SIZE, 3)


def test_resume_matches_uninterrupted(mock):
  full = take(stream(), 0, 5)
  resumed = take(stream(), 3, 2)
  for (x, y), (xr, yr) in zip(full[3:], resumed):
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)


def test_train_order_is_train_batch_indices(mock):
  ds = stream(train=False, split="validation")
  source = tfds.builder("imagenet2012").as_data_source(split="validation")
  want = data_lib.train_batch_indices(NUM_EXAMPLES, 8, 3, 0, 2)
  for (images, labels), keys in zip(take(ds, 0, 2), want):
    np.testing.assert_array_equal(labels, [int(source[int(k)]["label"]) for k in keys])
    np.testing.assert_array_equal(
      images[0], augment.eval_transform(source[int(keys[0])]["image"], SIZE)
    )


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_sees_each_example_once(mock, process_count):
  source = tfds.builder("imagenet2012").as_data_source(split="validation")
  hosts = []
  for p in range(process_count):
    ds = stream(split="validation", train=False, process_index=p, process_count=process_count)
    hosts.append(list(ds.eval_batches(8)))
  assert {len(h) for h in hosts} == {3}  # ceil(20 / 8), same on every host.
  images = np.concatenate([np.concatenate([h[i][0] for h in hosts]) for i in range(3)])
  labels = np.concatenate([np.concatenate([h[i][1] for h in hosts]) for i in range(3)])
  mask = np.concatenate([np.concatenate([h[i][2] for h in hosts]) for i in range(3)])
  assert images.shape == (24, SIZE, SIZE, 3) and mask.dtype == np.float32
  assert mask.sum() == NUM_EXAMPLES
  np.testing.assert_array_equal(mask, np.arange(24) < NUM_EXAMPLES)
  for k in range(NUM_EXAMPLES):
    record = source[k]
    assert labels[k] == record["label"]
    np.testing.assert_array_equal(images[k], augment.eval_transform(record["image"], SIZE))
  assert not images[NUM_EXAMPLES:].any() and not labels[NUM_EXAMPLES:].any()


def test_split_slices_and_overlap(mock):
  ds = stream(config(eval_split="train[15:]"), split="train[:15]")
  assert len(ds) == 15
  ds = stream(
    config(train_split="train[:75%]", eval_split="train[75%:]"), split="train[75%:]", train=False
  )
  ((_, labels, mask),) = list(ds.eval_batches(8))
  assert mask.sum() == 5
  with pytest.raises(UserError, match="config.data.eval_split.*overlaps"):
    stream(config(train_split="train[:15]", eval_split="train[10:]"), split="train[10:]")


def test_close_joins_threads(mock):
  ds = stream()
  it = ds.batches(0)
  next(it)
  assert input_threads()
  it.close()
  assert not input_threads()
  with pytest.raises(StopIteration):
    next(it)
  it = ds.batches(0)
  next(it)
  del it  # Abandoned: closed when collected.
  gc.collect()
  assert not input_threads()
  for _ in ds.eval_batches(8):
    pass
  assert not input_threads()


def test_worker_error_reaches_consumer_and_stops_threads(mock, monkeypatch):
  ds = stream()

  def broken(key):
    raise RuntimeError(f"unreadable record {key}")

  monkeypatch.setattr(ds, "read", broken)
  with pytest.raises(RuntimeError, match="unreadable record"):
    next(ds.batches(0))
  assert not input_threads()


# Transforms.


@pytest.mark.parametrize("height,width", [(1, 1), (7, 11), (3, 300), (300, 3), (375, 500)])
def test_crop_box_within_image(height, width):
  for seed in range(200):
    left, top, w, h = augment.random_crop_box(height, width, np.random.default_rng(seed))
    assert left >= 0 and left + w <= width and w > 0
    assert top >= 0 and top + h <= height and h > 0


def test_crop_box_distribution():
  boxes = np.array(
    [augment.random_crop_box(375, 500, np.random.default_rng(s)) for s in range(500)]
  )
  area = boxes[:, 2] * boxes[:, 3] / (375 * 500)
  ratio = boxes[:, 2] / boxes[:, 3]
  assert 0.07 < area.min() < 0.15 and area.max() > 0.9
  assert ((ratio > 0.7) & (ratio < 1.4)).all()


def test_uniform_color_without_distortion_stays_the_same():
  image = np.broadcast_to(np.array([200, 30, 90], np.uint8), (40, 60, 3))
  for seed in range(10):
    out = augment.train_transform(image, np.random.default_rng(seed), SIZE, 0.0)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert (out == image[0, 0]).all()
    out = augment.train_transform(image, np.random.default_rng(seed), SIZE, 1.0)
    assert (out == out[0, 0]).all()  # Distorted, but still one color.


def test_no_distortion_is_crop_and_flip_only():
  image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
  flips = 0
  for seed in range(20):
    out = augment.train_transform(image, np.random.default_rng(seed), SIZE, 0.0)
    rng = np.random.default_rng(seed)
    left, top, w, h = augment.random_crop_box(50, 70, rng)
    flip = rng.random() < 0.5
    want = np.asarray(
      Image.fromarray(image[top : top + h, left : left + w]).resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR
      )
    )
    np.testing.assert_array_equal(out, want[:, ::-1] if flip else want)
    distorted = augment.train_transform(image, np.random.default_rng(seed), SIZE, 1.0)
    assert not np.array_equal(out, distorted)
    flips += flip
  assert 3 < flips < 17


def test_eval_transform_is_resize_then_center_crop():
  rng = np.random.default_rng(1)
  for height, width in [(375, 500), (500, 333), (20, 13)]:
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    short = round(SIZE / 0.875)
    scale = short / min(height, width)
    rh, rw = round(height * scale), round(width * scale)
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR)).astype(
      int
    )
    top, left = (rh - SIZE) // 2, (rw - SIZE) // 2
    want = resized[top : top + SIZE, left : left + SIZE]
    got = augment.eval_transform(image, SIZE)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_grayscale_becomes_rgb():
  gray = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
  out = augment.eval_transform(gray, SIZE)
  assert out.shape == (SIZE, SIZE, 3)
  assert (out == out[..., :1]).all()


# Errors.


def test_not_prepared_names_data_dir_and_manual_location(tmp_path):
  with pytest.raises(UserError, match="config.data.tfds_data_dir") as e:
    stream(config(tfds_data_dir=str(tmp_path)))
  message = str(e.value)
  assert "not prepared" in message and "bn_repro[prepare]" in message
  assert str(tmp_path / "downloads" / "manual") in message
  assert "ILSVRC2012_img_train.tar" in message


@pytest.mark.parametrize(
  "cfg,kwargs,field",
  [
    (config(name="imagenet"), {}, "config.data.name"),
    (config(source="idx"), {}, "config.data.source"),
    (config(), dict(global_batch=7, process_count=2), "config.batch_size"),
    (config(), dict(distortion=1.5), "config.data.distortion"),
    (config(), dict(image_size=0), "config.data.image_size"),
    (config(), dict(split="test"), "config.data.train_split"),
  ],
)
def test_bad_arguments(mock, cfg, kwargs, field):
  with pytest.raises(UserError, match=field):
    stream(cfg, **kwargs)


# CIFAR-10 in memory.


def test_cifar10_load_splits():
  cfg = ml_collections.ConfigDict(
    dict(
      name="cifar10",
      source="tfds",
      tfds_data_dir="",
      idx_dir="",
      train_split="train[:75%]",
      eval_split="test",
    )
  )
  with tfds.testing.mock_data(num_examples=12):
    train, eval_ = data_lib.load_splits(cfg)
  assert train.images.shape == (9, 32, 32, 3) and train.images.dtype == np.uint8
  assert eval_.images.shape == (12, 32, 32, 3)
  for ds in (train, eval_):
    assert ds.labels.dtype == np.int32
    assert ((ds.labels >= 0) & (ds.labels < 10)).all()
  cfg.source = "idx"
  with pytest.raises(UserError, match="config.data.source.*no IDX files"):
    data_lib.load_splits(cfg)


def test_streamed_imagenet_reads_in_shard_order(mock):
  """data.shuffle="shards" reaches the streamed reader: its labels follow the shard order
  of data.train_batch_indices (tests/test_shuffle.py)."""
  cfg = config(shuffle="shards", shuffle_shards=4)
  kw = dict(split="validation", global_batch=5, image_size=8, train=False)
  source = tfds.builder("imagenet2012").as_data_source(split="validation")
  want = mnist.train_batch_indices(NUM_EXAMPLES, 5, 3, 0, 2, num_shards=4)
  for keys, (_, labels) in zip(want, take(stream(cfg, **kw), 0, 2), strict=True):
    np.testing.assert_array_equal(labels, [int(source[int(k)]["label"]) for k in keys])
  cfg.shuffle = "random"
  with pytest.raises(UserError, match="config.data.shuffle"):
    stream(cfg, **kw)
