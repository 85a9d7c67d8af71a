"""How the convolutions are computed: XLA's convolution, or im2col and one matrix product.

`im2col_conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)`) for the convolutions the Inception models have: 2-D,
NHWC inputs, HWIO kernels, no dilation, one feature group. It gathers the kh*kw shifted
(strided) views of the padded input into one patch tensor (N, H', W', kh*kw*C) and
multiplies it by the kernel reshaped to (kh*kw*C, O); a 1x1 convolution is a single
matrix product. Anything else (the depthwise stem, dilations) goes to XLA unchanged.

Why: on XLA:CPU the gradient with respect to a convolution's kernel is itself a
convolution whose window is the whole feature map, and it runs several times slower than a
matrix product with the same FLOPs. With im2col, the forward pass and both gradients are
matrix products and slices, which XLA:CPU runs well: on the small BN-Inception
(inception_small:bn_x5, batch 32) training is about 3.3x faster on a 2-core CPU
(scripts/benchmark.py times both paths). On GPUs and TPUs XLA's convolutions (cuDNN and the
like) are the better choice, and the patch tensor costs kh*kw times the input's memory, so
`"auto"` picks im2col on CPU only.

The two give the same function; results differ by float rounding only (sums in another
order), as any change of convolution algorithm does.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_plain_2d(
  lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count
) -> bool:
  """True for the case im2col serves: 2-D NHWC/HWIO, no dilation, one group."""
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())):
    return False
  wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == wanted


def im2col_conv_general_dilated(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated` with the same arguments, computed as im2col + one dot.

  Falls back to `lax.conv_general_dilated` outside the plain 2-D NHWC/HWIO case.
  """
  if not _is_plain_2d(
    lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count
  ):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  kh, kw, cin, cout = rhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  (top, bottom), (left, right) = padding
  x = lhs
  if top or bottom or left or right:  # lax.pad: negative padding crops, as in the convolution
    x = lax.pad(
      lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )
  n, hp, wp, _ = x.shape
  out_h, out_w = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
  taps = [
    lax.slice(
      x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin), (1, sh, sw, 1)
    )
    for i in range(kh)
    for j in range(kw)
  ]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  # Patch features are ordered (i, j, c): the row-major order of the HWIO kernel's first axes.
  return lax.dot_general(
    patches,
    rhs.reshape(kh * kw * cin, cout),
    (((3,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def resolve(impl: str, backend: str | None = None) -> str:
  """ "xla" or "im2col" for `impl` in CONV_IMPLS; "auto" is im2col on CPU, XLA elsewhere."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv implementation {impl!r} is not one of {CONV_IMPLS}")
  if impl != "auto":
    return impl
  return "im2col" if (backend or jax.default_backend()) == "cpu" else "xla"


def conv_general_dilated(impl: str) -> Callable[..., Any]:
  """The `conv_general_dilated` function for `impl` (see `resolve`), for `nn.Conv`."""
  if resolve(impl) == "im2col":
    return im2col_conv_general_dilated
  return lax.conv_general_dilated
