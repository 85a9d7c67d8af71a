"""Model registry: `build(config, ...)` maps `config.model.name` to a linen module."""

import functools
from typing import Any

import flax.linen as nn
import ml_collections

from bn_repro import batch_norm
from bn_repro.models import common
from bn_repro.models.mlp import MLP, PROBE

NAMES = ("mlp",)


def make_norm(config: ml_collections.ConfigDict, axis_name: str | None, dtype: Any):
  """The BN constructor the config asks for, or None when `model.use_bn` is off."""
  if not config.model.use_bn:
    return None
  bn = config.bn
  return functools.partial(
      batch_norm.BatchNorm,
      epsilon=bn.epsilon,
      decay=bn.decay,
      population=bn.population,
      unbiased=bn.unbiased,
      axis_name=axis_name if bn.cross_device else None,
      dtype=dtype,
  )


def build(config: ml_collections.ConfigDict, *, axis_name: str | None, dtype: Any) -> nn.Module:
  """The model of `config.model`, its BN synced over `axis_name` when `bn.cross_device`."""
  m = config.model
  if m.name == "mlp":
    return MLP(
        hidden=tuple(m.hidden),
        num_classes=m.num_classes,
        nonlinearity=m.nonlinearity,
        norm=make_norm(config, axis_name, dtype),
        kernel_init=common.gaussian_init(m.init_std, m.init_fan_in),
        dtype=dtype,
    )
  raise ValueError(f"unknown model {m.name!r}")


__all__ = ["MLP", "PROBE", "NAMES", "build", "make_norm"]
