"""bn_repro: Batch Normalization (Ioffe & Szegedy, 2015) reproduced in JAX/Flax.

`bn_repro.BatchNorm` and the pure functions are loaded on first use, so that
scripts importing only `bn_repro.metrics` do not pay for importing JAX.
"""

_LAZY = {"BatchNorm", "Moments", "moments", "normalize"}
__all__ = sorted(_LAZY)


def __getattr__(name):
  if name == "BatchNorm":
    from bn_repro import bn_layer

    return bn_layer.BatchNorm
  if name in _LAZY:
    from bn_repro import batch_norm

    return getattr(batch_norm, name)
  raise AttributeError(f"module 'bn_repro' has no attribute {name!r}")
