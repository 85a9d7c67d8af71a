"""Reader for IDX files (the format MNIST ships in), optionally gzipped.

Parsed with numpy and the stdlib only, so offline runs need no tfds or
TensorFlow. Every malformed file raises `UserError` naming the file.
"""

import gzip
import os
import zlib

import numpy as np
from etils import epath

from bn_repro.errors import UserError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"
_FIELD = "config.data.idx_dir"


def _invalid(path: str, reason: str) -> UserError:
  return UserError(
    f"{path} is not a valid IDX file ({reason}); replace it with the"
    " original file or point config.data.idx_dir at a directory that has"
    " one.",
    field=_FIELD,
  )


def _read_bytes(path: str) -> bytes:
  raw = epath.Path(path).read_bytes()  # a local file or an object (gs://...)
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise _invalid(path, f"corrupt gzip data: {e}") from e


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads one uint8 IDX array, checking its magic number and exact size."""
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise _invalid(path, f"only {len(raw)} bytes, too short for a header")
  found = int.from_bytes(raw[:4], "big")
  if found != magic:
    raise _invalid(path, f"magic number 0x{found:08x}, expected 0x{magic:08x}")
  ndim = magic & 0xFF
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise _invalid(path, "truncated header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = header_size + int(np.prod(shape, dtype=np.int64))
  if len(raw) != expected:
    what = "truncated" if len(raw) < expected else "trailing bytes"
    raise _invalid(path, f"{what}: {len(raw)} bytes but the header {shape} needs {expected}")
  return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def read_image_label_pair(
  images_path: str, labels_path: str, image_shape: tuple[int, int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
  """Reads matching image/label IDX files as uint8 [N, H, W, C], int32 [N]."""
  images = read_idx(images_path, IMAGES_MAGIC)
  labels = read_idx(labels_path, LABELS_MAGIC)
  height, width, channels = image_shape
  if images.shape[1:] != (height, width):
    raise _invalid(
      images_path, f"images are {images.shape[1]}x{images.shape[2]}, expected {height}x{width}"
    )
  if len(images) != len(labels):
    raise _invalid(
      labels_path,
      f"{len(labels)} labels but {os.path.basename(images_path)} has {len(images)} images",
    )
  if len(labels) and int(labels.max()) >= num_classes:
    raise _invalid(labels_path, f"label {int(labels.max())} is outside 0..{num_classes - 1}")
  images = images.reshape(len(images), height, width, channels)
  return images, labels.astype(np.int32)
