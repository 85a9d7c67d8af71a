"""An independent IDX writer for tests: big-endian magic and dims, then uint8 data."""

import gzip
import pathlib
import struct

import numpy as np

IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801


def write_idx(
  path: pathlib.Path, array: np.ndarray, magic: int, gz: bool = False, count: int | None = None
) -> pathlib.Path:
  """Writes `array` as IDX; `count` overrides the first dimension in the header."""
  shape = list(array.shape)
  if count is not None:
    shape[0] = count
  payload = struct.pack(f">I{len(shape)}I", magic, *shape) + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(payload) if gz else payload)
  return path


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (
    rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
    rng.integers(0, 10, (n,), dtype=np.uint8),
  )


def write_pair(
  directory: pathlib.Path, prefix: str, n: int, seed: int, gz: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """`<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]` of random digits."""
  images, labels = fake_mnist(n, seed)
  suffix = ".gz" if gz else ""
  write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, IMAGES_MAGIC, gz)
  write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, LABELS_MAGIC, gz)
  return images, labels


def write_mnist_dir(directory: pathlib.Path, train: int, test: int) -> pathlib.Path:
  """A directory the CLI reads with data.source=idx: `train` and `t10k` pairs of random digits."""
  write_pair(directory, "train", train, seed=1)
  write_pair(directory, "t10k", test, seed=2)
  return directory
