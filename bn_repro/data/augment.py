"""Per-example image transforms of the streamed input: pure functions of the image and a generator.

Augmentation (training): Inception-style random-sized crop, bilinear resize to
image_size, horizontal flip, then photometric distortion (brightness, contrast,
saturation) whose strength `distortion` in [0, 1] scales the jitter range
(factors in 1 +- 0.4 * distortion, applied in random order). The paper's BN-x5
and later use "fewer photometric distortions" (Sec. 4.2.1), so configs use 1.0
for the baseline and 0.25 for those. Hue jitter and PCA lighting noise are not
applied. Evaluation: shorter side resized to image_size / 0.875, single center
crop of image_size.
"""

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

MIN_AREA = 0.08  # Random-sized crop: fraction of the image area.
ASPECT_RATIOS = (3 / 4, 4 / 3)  # Random-sized crop: width / height.
CROP_ATTEMPTS = 10  # Then a center crop.
EVAL_CROP_FRACTION = 0.875  # Center crop of image_size from image_size / 0.875.
MAX_JITTER = 0.4  # Brightness/contrast/saturation factor range at distortion 1.
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma.


def _rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] from grayscale, RGB or RGBA."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def random_crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(left, top, width, height) of an Inception-style random-sized crop.

  Area fraction uniform in [MIN_AREA, 1], aspect ratio log-uniform in
  ASPECT_RATIOS; after CROP_ATTEMPTS misses, the largest centered box whose
  aspect ratio is within range. The box always lies inside the image.
  """
  log_lo, log_hi = (math.log(r) for r in ASPECT_RATIOS)
  for _ in range(CROP_ATTEMPTS):
    area = height * width * rng.uniform(MIN_AREA, 1.0)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(area * ratio)))
    h = int(round(math.sqrt(area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, w, h
  w, h = width, height
  if width / height < ASPECT_RATIOS[0]:
    h = min(height, max(1, int(round(width / ASPECT_RATIOS[0]))))
  elif width / height > ASPECT_RATIOS[1]:
    w = min(width, max(1, int(round(height * ASPECT_RATIOS[1]))))
  return (width - w) // 2, (height - h) // 2, w, h


def photometric(
  image: np.ndarray, factors: Sequence[float] | np.ndarray, order: Sequence[int] | np.ndarray
) -> np.ndarray:
  """Brightness, contrast and saturation (factors[0..2]) in the given order.

  Each blends with black, the mean gray level or the per-pixel gray level as
  torchvision's ColorJitter does, clipping to [0, 255] after each.
  """
  x = image.astype(np.float32)
  for k in order:
    factor = np.float32(factors[k])
    if k == 0:
      x *= factor
    else:
      gray = x[..., 0] * _GRAY[0] + x[..., 1] * _GRAY[1] + x[..., 2] * _GRAY[2]
      gray = np.float32(gray.mean()) if k == 1 else gray[..., None]
      x -= gray
      x *= factor
      x += gray
    np.clip(x, 0.0, 255.0, out=x)
  np.rint(x, out=x)
  return x.astype(np.uint8)


def train_transform(
  image: np.ndarray, rng: np.random.Generator, size: int, distortion: float
) -> np.ndarray:
  """uint8 [size, size, 3]: random-sized crop, resize, flip, distortion.

  The crop and flip draw from `rng` before the distortion does, so they do not
  depend on `distortion`: variants that differ only in it see the same crops.
  """
  image = _rgb(image)
  left, top, w, h = random_crop_box(image.shape[0], image.shape[1], rng)
  flip = rng.random() < 0.5
  spread = MAX_JITTER * distortion
  factors = rng.uniform(1.0 - spread, 1.0 + spread, size=3)
  order = rng.permutation(3)
  resized = Image.fromarray(image[top : top + h, left : left + w]).resize(
    (size, size), Image.Resampling.BILINEAR
  )
  if flip:
    resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  out = np.asarray(resized)
  if distortion > 0:
    out = photometric(out, factors, order)
  return out


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: shorter side to size / 0.875, center crop.

  One PIL resize of the box that the center crop covers, which equals
  resizing the whole image and then cropping, at a fraction of the cost.
  """
  image = _rgb(image)
  height, width = image.shape[:2]
  scale = round(size / EVAL_CROP_FRACTION) / min(height, width)
  resized_h = max(size, int(round(height * scale)))
  resized_w = max(size, int(round(width * scale)))
  top, left = (resized_h - size) // 2, (resized_w - size) // 2
  sy, sx = height / resized_h, width / resized_w
  box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box))
