"""Model registry: `build(config, ...)` maps `config.model.name` to a linen module.

`config` is an ml_collections.ConfigDict or anything with its attribute and item access
(bn_repro.benchmark.accelerator builds models without ml_collections installed).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn

if TYPE_CHECKING:
  import ml_collections

from bn_repro import bn_layer
from bn_repro.models import common
from bn_repro.models.inception import Inception
from bn_repro.models.lstm import LSTM
from bn_repro.models.mlp import MLP, PROBE

NAMES = ("mlp", "inception", "bn_inception", "lstm")


# BatchNorm options that configs carry under config.bn with the module's defaults
# (ghost batches, Batch Renormalization, noise, frozen statistics).
BN_VARIANT_FIELDS = (
  "virtual_batch_size",
  "renorm",
  "renorm_rmax",
  "renorm_dmax",
  "renorm_start",
  "renorm_rmax_end",
  "renorm_dmax_end",
  "noise_mean",
  "noise_scale",
  "noise_std",
  "freeze_step",
)


def bn_variant_defaults() -> dict[str, Any]:
  """{field: default} of BN_VARIANT_FIELDS, read from `bn_layer.BatchNorm` itself."""
  return {
    f.name: f.default for f in dataclasses.fields(bn_layer.BatchNorm) if f.name in BN_VARIANT_FIELDS
  }


def make_norm(config: ml_collections.ConfigDict, axis_name: str | None, dtype: Any):
  """The BN constructor the config asks for, or None when `model.use_bn` is off."""
  if not config.model.use_bn:
    return None
  bn = config.bn
  variants = {k: bn[k] for k in BN_VARIANT_FIELDS if k in bn}
  return functools.partial(
    bn_layer.BatchNorm,
    epsilon=bn.epsilon,
    decay=bn.decay,
    population=bn.population,
    unbiased=bn.unbiased,
    axis_name=axis_name if bn.cross_device else None,
    dtype=dtype,
    **variants,
  )


def build(config: ml_collections.ConfigDict, *, axis_name: str | None, dtype: Any) -> nn.Module:
  """The model of `config.model`, its BN synced over `axis_name` when `bn.cross_device`.

  "inception" and "bn_inception" both build `Inception` (models/inception.py) from the
  same fields; the name is a label: BN comes from `model.use_bn` alone (so BN-Baseline
  is "inception" + use_bn). Fields of config.model they read:
    num_classes       int: logits (1000 for ImageNet).
    nonlinearity      "relu" | "sigmoid" | "tanh".
    use_bn            bool: BN (per config.bn) after every convolution, no conv biases.
    dropout_rate      float: dropout before the classifier (baseline 0.4, BN-x5 0.0);
                      > 0 needs a 'dropout' rng in training.
    use_lrn           bool: local response normalization in the stem (baseline only).
    width_multiplier  float: scales every channel count (1.0 = the table).
    modules           sequence of module names, a subset of inception.MODULE_NAMES
                      ("3a", ..., "5b") in table order; () = stem only.
    stem              "imagenet" (224x224 inputs) | "small" (28x28 / 32x32 inputs).
    stem_stride       int: stride of the small stem's conv (ignored by "imagenet").
    separable_stem    bool: separable 7x7/2 stem conv (the paper) or a plain 7x7/2.
    pool_proj_4cd     int: 4c/4d pool projections, 128 (table) or 96 (TF-slim).
    init_std, init_fan_in: kernels ~ N(0, init_std^2 [/ fan_in]) (He: sqrt(2), True).
    conv_impl         "auto" | "xla" | "im2col": how convolutions are computed (models/conv.py;
                      auto: im2col on CPU, XLA's convolutions on GPU/TPU). Optional, "auto".
    probe_unit        (read by the trainer) channel of the sown probe to track.
  """
  m = config.model
  if m.name == "mlp":
    return MLP(
      hidden=tuple(m.hidden),
      num_classes=m.num_classes,
      nonlinearity=m.nonlinearity,
      norm=make_norm(config, axis_name, dtype),
      bn_position=m.bn_position,
      dropout_rate=m.dropout_rate,
      kernel_init=common.gaussian_init(m.init_std, m.init_fan_in),
      dtype=dtype,
    )
  if m.name in ("inception", "bn_inception"):
    # Fields: see the docstring above.
    return Inception(
      num_classes=m.num_classes,
      nonlinearity=m.nonlinearity,
      norm=make_norm(config, axis_name, dtype),
      dropout_rate=m.dropout_rate,
      use_lrn=m.use_lrn,
      width_multiplier=m.width_multiplier,
      modules=tuple(m.modules),
      stem=m.stem,
      stem_stride=m.stem_stride,
      separable_stem=m.separable_stem,
      pool_proj_4cd=m.pool_proj_4cd,
      kernel_init=common.gaussian_init(m.init_std, m.init_fan_in),
      dtype=dtype,
      conv_impl=m.get("conv_impl", "auto"),
    )
  if m.name == "lstm":
    # Per-time-step BN lives inside the cell (models/lstm.py), so it takes config.bn's
    # fields itself rather than a BatchNorm constructor from make_norm.
    return LSTM(
      hidden=m.hidden,
      num_classes=m.num_classes,
      sequence=m.sequence,
      nonlinearity=m.nonlinearity,
      use_bn=m.use_bn,
      epsilon=config.bn.epsilon,
      decay=config.bn.decay,
      population=config.bn.population,
      unbiased=config.bn.unbiased,
      axis_name=axis_name if config.bn.cross_device else None,
      bn_scale_init=m.bn_scale_init,
      forget_bias=m.forget_bias,
      kernel_init=common.gaussian_init(m.init_std, m.init_fan_in),
      dtype=dtype,
    )
  raise ValueError(f"unknown model {m.name!r}")


__all__ = [
  "Inception",
  "MLP",
  "PROBE",
  "NAMES",
  "BN_VARIANT_FIELDS",
  "bn_variant_defaults",
  "build",
  "make_norm",
]
