"""Domain shifts of uint8 image arrays, for AdaBN (Li et al. 2016): a spec string to a function.

Specs (one string each, as a command line gives them):
  none            the images unchanged;
  invert          255 - x;
  rotate:<deg>    rotated by <deg> degrees about the image centre in scipy.ndimage's
                  sense (rotate:90 is np.rot90 of each image), bilinear, same size,
                  zeros where no pixel maps;
  noise:<std>     plus Gaussian noise of std <std> in [0, 1] pixel units (std * 255
                  grey levels), rounded and clipped to 0..255; seeded by the caller.
"""

import dataclasses
import math

import numpy as np

from bn_repro.errors import UserError

SYNTAX = "none, invert, rotate:<degrees> or noise:<std in [0, 1]>"


@dataclasses.dataclass(frozen=True)
class Shift:
  """One parsed shift; call it on uint8 [N, H, W, C] images to get a shifted copy."""

  spec: str
  kind: str  # "none", "invert", "rotate" or "noise"
  amount: float = 0.0  # degrees, or the noise std in [0, 1] pixel units

  def __call__(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """The shifted images (uint8, same shape); `seed` draws the noise."""
    if self.kind == "invert":
      return 255 - images
    if self.kind == "rotate":
      from scipy import ndimage  # slow; only AdaBN needs it

      # axes (2, 1): the (width, height) plane, scipy's default for a single 2-D image.
      x = ndimage.rotate(
        images.astype(np.float32),
        self.amount,
        axes=(2, 1),
        reshape=False,
        order=1,
        mode="constant",
        cval=0.0,
      )
    elif self.kind == "noise":
      noise = np.random.default_rng(seed).normal(0.0, self.amount * 255.0, images.shape)
      x = images + noise
    else:
      return images.copy()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def parse_shift(spec: str) -> Shift:
  """A Shift from its spec (see the module docstring); an unknown one is a UserError."""
  kind, sep, arg = spec.strip().partition(":")
  if kind in ("none", "invert") and not sep:
    return Shift(spec, kind)
  if kind in ("rotate", "noise") and sep:
    try:
      amount = float(arg)
    except ValueError:
      amount = math.nan
    if math.isfinite(amount) and (kind == "rotate" or 0 <= amount <= 1):
      return Shift(spec, kind, amount)
  raise UserError(f"unknown shift {spec!r}; use {SYNTAX}", field="--shifts")
