"""BN-Inception (paper Appendix, Figure 5) and the Inception baseline of Sec. 4.2.

One class, `Inception`, builds both; `bn_inception()` and `inception_baseline()` are
the two presets. The baseline is the same network without BN, with local response
normalization after the stem and 40% dropout before the classifier: the paper's
"Inception" is a GoogLeNet variant whose 5x5 convolutions are replaced by two 3x3
ones (Sec. 4.2), i.e. the module layout of the appendix table, and BN-Baseline is
"Inception + BN, nothing else", so one class with options covers every row of the
Sec. 4.2 table.

Choices where the paper is silent or inconsistent (each is an attribute or noted here):
  * Stem "conv 7x7/2, separable with depth multiplier 8": a depthwise 7x7/2 convolution
    with channel multiplier 8 (3 -> 24 channels, no bias, no BN) then a 1x1 convolution
    to 64 channels followed by BN and the nonlinearity: BN once per separable
    convolution, as TF-slim's `separable_conv2d`. `separable_stem=False` gives a plain
    7x7/2 convolution instead.
  * Table rows 4c and 4d concatenate to 608 channels, not the 576 the output column
    says. `pool_proj_4cd=128` keeps the table's projections (4c, 4d give 608 and the
    4e pass-through then gives 192 + 256 + 608 = 1056 channels, not 1024);
    `pool_proj_4cd=96` is TF-slim's inception_v2 reading (576 and 1024 as printed).
  * In the stride-2 modules 3c and 4e the stride is on the last convolution of the 3x3
    and double-3x3 branches and on the max pool (pass-through, no projection), as in
    TF-slim. Padding is 'SAME' everywhere, so 224 -> 112, 56, 28, 14, 7.
  * Average pooling inside modules is 3x3/1 and excludes the padding from the divisor
    (TensorFlow's convention, not Caffe's); the final "avg pool 7x7" is a global mean
    over the spatial axes (identical at 224x224, and it serves any input size).
  * Auxiliary classifiers are omitted: the paper's BN-Inception description gives
    neither their layout nor their loss weight.
  * Every convolution is followed by BN (when `norm` is given) and the nonlinearity;
    convolution biases exist only without BN (beta replaces them, Sec. 3.2). The
    classifier always has a bias.
  * LRN (baseline only; `use_lrn`) follows GoogLeNet's placement (after the first max
    pool and after the 3x3 stem convolution, before the second max pool) and Caffe's
    defaults; see `local_response_norm`.
  * Dropout (`dropout_rate`, 0.4 for the baseline as in GoogLeNet) is applied to the
    pooled features before the classifier; in training it needs a 'dropout' rng.

Small variants for CPU: `width_multiplier` scales every channel count (`scale_channels`),
`modules` keeps a subset of the ten modules, and `stem='small'` replaces the ImageNet
stem by one 3x3/1 convolution to 192 (scaled) channels with no pooling, so that a
28x28 (MNIST) or 32x32 (CIFAR-10) input reaches module 3a at the same 28x28 / 32x32
resolution the full network has there. The depth multiplier 8 and the module strides
are not scaled.

Parameter counts at 1000 classes (scripts/param_counts.py): BN-Inception 11,278,528
(pool_proj_4cd=128; 11,188,288 with 96), close to the ~11.2M the table implies; the
baseline built this way has 11,268,512, not the 13.6M the paper quotes for "Inception",
which presumably counts parts the paper does not describe (e.g. auxiliary classifiers).

Sown into the `intermediates` collection (a no-op unless the caller makes it mutable;
`init` never does): under `PROBE`, as in the MLP and for the trainer's probe, the
global-average-pooled pre-nonlinearity values of ONE convolution, shape (batch,
channels): the last 3x3 of the double-3x3 branch of the last module (the last stem
convolution when `modules` is empty); and every stage's output under its name in the
table ('conv1', 'pool1', 'conv2', 'pool2' of the ImageNet stem or 'conv1' of the small
one, then '3a', ..., '5b'), for shape checks.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bn_repro import bn_layer
from bn_repro.models import common
from bn_repro.models import conv as conv_lib
from bn_repro.models.mlp import PROBE

Array = jax.Array

INTERMEDIATES = "intermediates"  # collection of the sown probe and stage outputs
STEMS = ("imagenet", "small")
MIN_CHANNELS = 4  # floor of a width-scaled channel count (1/8 of the table's smallest, 32)
DEPTH_MULTIPLIER = 8  # of the separable 7x7 stem convolution


class ModuleSpec(NamedTuple):
  """One row of the appendix table; 0 channels means the branch (or projection) is absent."""

  b1x1: int
  b3x3_reduce: int
  b3x3: int
  d3x3_reduce: int
  d3x3: int
  pool: str  # "avg" or "max"
  pool_proj: int  # 0: pass-through (stride-2 modules)
  stride: int


# The appendix table (Figure 5). 4c and 4d use `pool_proj_4cd` in place of their 128.
TABLE = {
  "3a": ModuleSpec(64, 64, 64, 64, 96, "avg", 32, 1),
  "3b": ModuleSpec(64, 64, 96, 64, 96, "avg", 64, 1),
  "3c": ModuleSpec(0, 128, 160, 64, 96, "max", 0, 2),
  "4a": ModuleSpec(224, 64, 96, 96, 128, "avg", 128, 1),
  "4b": ModuleSpec(192, 96, 128, 96, 128, "avg", 128, 1),
  "4c": ModuleSpec(160, 128, 160, 128, 160, "avg", 128, 1),
  "4d": ModuleSpec(96, 128, 192, 160, 192, "avg", 128, 1),
  "4e": ModuleSpec(0, 128, 192, 192, 256, "max", 0, 2),
  "5a": ModuleSpec(352, 192, 320, 160, 224, "avg", 128, 1),
  "5b": ModuleSpec(352, 192, 320, 192, 224, "max", 128, 1),
}
MODULE_NAMES = tuple(TABLE)


def scale_channels(channels: int, width_multiplier: float) -> int:
  """round(channels * width_multiplier), at least MIN_CHANNELS; 0 (absent) stays 0."""
  if channels == 0:
    return 0
  return max(MIN_CHANNELS, int(channels * width_multiplier + 0.5))


def module_spec(name: str, width_multiplier: float = 1.0, pool_proj_4cd: int = 128) -> ModuleSpec:
  """The table row of module `name`, with the 4c/4d projection choice, width-scaled."""
  spec = TABLE[name]
  if name in ("4c", "4d"):
    spec = spec._replace(pool_proj=pool_proj_4cd)
  channels: dict[str, Any] = {
    f: scale_channels(getattr(spec, f), width_multiplier)
    for f in ("b1x1", "b3x3_reduce", "b3x3", "d3x3_reduce", "d3x3", "pool_proj")
  }
  return spec._replace(**channels)


def local_response_norm(
  x: Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Array:
  """Across-channel LRN as in Caffe (AlexNet, GoogLeNet), on the last axis.

  y_c = x_c / (k + alpha / size * sum_{c' in window(c)} x_{c'}^2) ^ beta, the window
  being the `size` channels centred on c (clipped at the edges). Defaults are
  GoogLeNet's (Caffe's): size 5, alpha 1e-4, beta 0.75, k 1. Caffe divides alpha by
  `size`; TensorFlow's `tf.nn.lrn` does not, so its equivalent is depth_radius=2,
  bias=1, alpha=2e-5, beta=0.75. Computed in float32.
  """
  dtype = x.dtype
  x = x.astype(jnp.promote_types(dtype, jnp.float32))
  before = (size - 1) // 2
  window = (1,) * (x.ndim - 1) + (size,)
  padding = ((0, 0),) * (x.ndim - 1) + ((before, size - 1 - before),)
  sums = lax.reduce_window(jnp.square(x), 0.0, lax.add, window, (1,) * x.ndim, padding)
  return (x / (k + (alpha / size) * sums) ** beta).astype(dtype)


class ConvBN(nn.Module):
  """Convolution then BN: the pre-nonlinearity value BN(W * u) (or W * u + b without BN).

  Attributes:
    features: output channels.
    kernel_size: (height, width).
    strides: stride in both spatial dimensions.
    norm: BN layer constructor, or None (then the convolution has a bias).
    kernel_init: initializer of the kernel.
    dtype: compute dtype.
    conv_impl: how the convolution is computed, one of conv.CONV_IMPLS (see models/conv.py).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  norm: Callable[..., nn.Module] | None = None
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding="SAME",
      use_bias=self.norm is None,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      conv_general_dilated=conv_lib.conv_general_dilated(self.conv_impl),
      name="conv",
    )(x)
    if self.norm is not None:
      x = self.norm(use_running_average=not train, name="bn")(x)
    return x


def conv_bn_of(module: Any) -> Callable[..., ConvBN]:
  """ConvBN with a module's norm, kernel init, dtype and convolution implementation."""
  return functools.partial(
    ConvBN,
    norm=module.norm,
    kernel_init=module.kernel_init,
    dtype=module.dtype,
    conv_impl=module.conv_impl,
  )


class InceptionModule(nn.Module):
  """One module of the table: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool(-1x1) branches, concatenated.

  Returns the concatenated output and the pre-nonlinearity values of the double-3x3
  branch's last convolution (the model's probe, when this is its last module).

  Attributes:
    spec: the (already width-scaled) table row.
    nonlinearity: a name in `common.NONLINEARITIES`.
    norm: BN layer constructor, or None.
    kernel_init: initializer of every kernel.
    dtype: compute dtype.
    conv_impl: how convolutions are computed (models/conv.py).
  """

  spec: ModuleSpec
  nonlinearity: str = "relu"
  norm: Callable[..., nn.Module] | None = None
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    s = self.spec
    act = common.NONLINEARITIES[self.nonlinearity]
    conv = conv_bn_of(self)
    branches = []
    if s.b1x1:
      branches.append(act(conv(s.b1x1, (1, 1), name="b1x1")(x, train)))
    y = act(conv(s.b3x3_reduce, (1, 1), name="b3x3_reduce")(x, train))
    branches.append(act(conv(s.b3x3, (3, 3), strides=s.stride, name="b3x3")(y, train)))
    y = act(conv(s.d3x3_reduce, (1, 1), name="d3x3_reduce")(x, train))
    y = act(conv(s.d3x3, (3, 3), name="d3x3_a")(y, train))
    probe = conv(s.d3x3, (3, 3), strides=s.stride, name="d3x3_b")(y, train)
    branches.append(act(probe))
    window, strides = (3, 3), (s.stride, s.stride)
    if s.pool == "avg":
      y = nn.avg_pool(x, window, strides, padding="SAME", count_include_pad=False)
    elif s.pool == "max":
      y = nn.max_pool(x, window, strides, padding="SAME")
    else:
      raise ValueError(f"pool {s.pool!r} is not 'avg' or 'max'")
    if s.pool_proj:
      y = act(conv(s.pool_proj, (1, 1), name="pool_proj")(y, train))
    branches.append(y)
    return jnp.concatenate(branches, axis=-1), probe


class Inception(nn.Module):
  """BN-Inception / Inception baseline classifier on NHWC images; returns float32 logits.

  Attributes:
    num_classes: outputs (logits).
    nonlinearity: a name in `common.NONLINEARITIES` (the paper: relu; BN-x5-Sigmoid).
    norm: BN layer constructor (called with `use_running_average`), or None for no BN.
    dropout_rate: dropout before the classifier (0 = none; baseline 0.4).
    use_lrn: local response normalization in the stem (baseline only).
    width_multiplier: scales every channel count (see `scale_channels`).
    modules: which table modules to keep, in table order (default all ten).
    stem: "imagenet" (224x224 inputs) or "small" (28x28 / 32x32 inputs).
    separable_stem: the paper's separable 7x7 stem conv (else a plain 7x7/2 conv).
    pool_proj_4cd: pool projection of 4c and 4d: 128 (table) or 96 (TF-slim).
    kernel_init: initializer of every kernel (convolutions and classifier).
    dtype: compute dtype; parameters stay float32.
    conv_impl: how convolutions are computed, one of conv.CONV_IMPLS: "auto" (im2col and a
      matrix product on CPU, XLA's convolution elsewhere), "xla" or "im2col" (models/conv.py).
  """

  num_classes: int = 1000
  nonlinearity: str = "relu"
  norm: Callable[..., nn.Module] | None = None
  dropout_rate: float = 0.0
  stem_stride: int = 1  # stride of the small stem's conv (2: 28x28 inputs reach 3a at 14x14)
  use_lrn: bool = False
  width_multiplier: float = 1.0
  modules: Sequence[str] = MODULE_NAMES
  stem: str = "imagenet"
  separable_stem: bool = True
  pool_proj_4cd: int = 128
  kernel_init: Callable[..., Any] = common.gaussian_init(2**0.5, fan_in_scaled=True)  # He
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  def _check(self):
    if self.stem not in STEMS:
      raise ValueError(f"stem {self.stem!r} is not one of {STEMS}")
    conv_lib.resolve(self.conv_impl)  # raises on an unknown name
    unknown = [m for m in self.modules if m not in TABLE]
    if unknown:
      raise ValueError(f"unknown modules {unknown}; choose from {MODULE_NAMES}")
    order = [MODULE_NAMES.index(m) for m in self.modules]
    if order != sorted(set(order)):
      raise ValueError(f"modules {tuple(self.modules)} must be distinct and in table order")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    self._check()
    act = common.NONLINEARITIES[self.nonlinearity]
    ch = functools.partial(scale_channels, width_multiplier=self.width_multiplier)
    conv = conv_bn_of(self)
    x = x.astype(self.dtype)

    if self.stem == "imagenet":
      if self.separable_stem:
        x = nn.Conv(
          x.shape[-1] * DEPTH_MULTIPLIER,
          (7, 7),
          strides=2,
          padding="SAME",
          feature_group_count=x.shape[-1],
          use_bias=False,
          kernel_init=self.kernel_init,
          dtype=self.dtype,
          conv_general_dilated=conv_lib.conv_general_dilated(self.conv_impl),
          name="stem_conv1_depthwise",
        )(x)
        probe = conv(ch(64), (1, 1), name="stem_conv1")(x, train)
      else:
        probe = conv(ch(64), (7, 7), strides=2, name="stem_conv1")(x, train)
      x = act(probe)
      self.sow(INTERMEDIATES, "conv1", x)
      x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
      self.sow(INTERMEDIATES, "pool1", x)
      if self.use_lrn:
        x = local_response_norm(x)
      x = act(conv(ch(64), (1, 1), name="stem_conv2_reduce")(x, train))
      probe = conv(ch(192), (3, 3), name="stem_conv2")(x, train)
      x = act(probe)
      if self.use_lrn:
        x = local_response_norm(x)
      self.sow(INTERMEDIATES, "conv2", x)
      x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
      self.sow(INTERMEDIATES, "pool2", x)
    else:
      probe = conv(ch(192), (3, 3), strides=self.stem_stride, name="stem_conv1")(x, train)
      x = act(probe)
      if self.use_lrn:
        x = local_response_norm(x)
      self.sow(INTERMEDIATES, "conv1", x)

    for name in self.modules:
      spec = module_spec(name, self.width_multiplier, self.pool_proj_4cd)
      x, probe = InceptionModule(
        spec,
        self.nonlinearity,
        self.norm,
        self.kernel_init,
        self.dtype,
        self.conv_impl,
        name=f"inception_{name}",
      )(x, train)
      self.sow(INTERMEDIATES, name, x)

    self.sow(INTERMEDIATES, PROBE, jnp.mean(probe, axis=(1, 2)))
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="logits")(x)
    return x.astype(jnp.float32)


def bn_inception(norm: Callable[..., nn.Module] = bn_layer.BatchNorm, **kwargs) -> Inception:
  """BN-Inception as BN-x5 / BN-x30 use it: BN everywhere, no LRN, no dropout."""
  return Inception(norm=norm, **{"use_lrn": False, "dropout_rate": 0.0, **kwargs})


def inception_baseline(**kwargs) -> Inception:
  """The "Inception" baseline of Sec. 4.2: no BN, LRN in the stem, 40% dropout."""
  return Inception(**{"norm": None, "use_lrn": True, "dropout_rate": 0.4, **kwargs})


def count_params(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Number of values in the `params` collection (not `batch_stats`), without allocating."""
  variables = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32),
  )
  return sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
