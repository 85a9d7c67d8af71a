"""The paper's MNIST network (Sec. 4.1): 784 -> 3 x 100 -> 10, BN before each nonlinearity."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bn_repro.models import common

PROBE = "probe"  # name of the sown pre-nonlinearity values of the last hidden layer


POSITIONS = ("wu", "after_act", "u")


class MLP(nn.Module):
  """Fully connected classifier with BN (when `norm` is given) at `bn_position`.

  bn_position (where each hidden layer normalizes; Sec. 3.2 discusses the choice):
    "wu"         the paper: z = g(BN(W u)); the dense layer has no bias (BN's beta
                 replaces it).
    "after_act"  z = BN(g(W u + b)): after the nonlinearity.
    "u"          z = g(W BN(u) + b): the layer's input, before the matrix product
                 (for the first layer, the pixels).
  The last hidden layer's pre-nonlinearity values (W u, after BN for "wu") are sown
  into the `intermediates` collection under `PROBE`; sowing is a no-op unless the
  caller makes `intermediates` mutable, so the training step pays nothing for it.
  Dropout (rate `dropout_rate`, needs a 'dropout' rng in training) follows each
  hidden layer.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: outputs (logits).
    nonlinearity: a name in `common.NONLINEARITIES`.
    norm: BN layer constructor (called with `use_running_average`), or None.
    bn_position: one of POSITIONS.
    dropout_rate: in [0, 1).
    kernel_init: initializer of every weight matrix.
    dtype: compute dtype; parameters stay float32.
  """

  hidden: Sequence[int] = (100, 100, 100)
  num_classes: int = 10
  nonlinearity: str = "sigmoid"
  norm: Callable[..., nn.Module] | None = None
  bn_position: str = "wu"
  dropout_rate: float = 0.0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.bn_position not in POSITIONS:
      raise ValueError(f"bn_position {self.bn_position!r} is not one of {POSITIONS}")
    act = common.NONLINEARITIES[self.nonlinearity]
    make_norm = self.norm
    norm = (
      None
      if make_norm is None
      else (lambda i, h: make_norm(use_running_average=not train, name=f"bn{i}")(h))
    )
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, width in enumerate(self.hidden):
      if norm and self.bn_position == "u":
        x = norm(i, x)
      x = nn.Dense(
        width,
        use_bias=norm is None or self.bn_position != "wu",
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=f"dense{i}",
      )(x)
      if norm and self.bn_position == "wu":
        x = norm(i, x)
      if i == len(self.hidden) - 1:
        self.sow("intermediates", PROBE, x)
      x = act(x)
      if norm and self.bn_position == "after_act":
        x = norm(i, x)
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="logits")(x)
    return x.astype(jnp.float32)
