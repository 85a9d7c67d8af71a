"""The paper's MNIST network (Sec. 4.1): 784 -> 3 x 100 -> 10, BN before each nonlinearity."""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bn_repro.models import common

PROBE = "probe"  # name of the sown pre-nonlinearity values of the last hidden layer


class MLP(nn.Module):
  """Fully connected classifier; `norm` (a BatchNorm partial) is applied to W u, not u.

  With `norm` the hidden layers have no bias (BN's beta replaces it, Sec. 3.2).
  The last hidden layer's pre-nonlinearity values are sown into the
  `intermediates` collection under `PROBE`; sowing is a no-op unless the caller
  makes `intermediates` mutable, so the training step pays nothing for it.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: outputs (logits).
    nonlinearity: a name in `common.NONLINEARITIES`.
    norm: BN layer constructor (called with `use_running_average`), or None.
    kernel_init: initializer of every weight matrix.
    dtype: compute dtype; parameters stay float32.
  """

  hidden: Sequence[int] = (100, 100, 100)
  num_classes: int = 10
  nonlinearity: str = "sigmoid"
  norm: Callable[..., nn.Module] | None = None
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = common.NONLINEARITIES[self.nonlinearity]
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=self.norm is None, kernel_init=self.kernel_init,
                   dtype=self.dtype, name=f"dense{i}")(x)
      if self.norm is not None:
        x = self.norm(use_running_average=not train, name=f"bn{i}")(x)
      if i == len(self.hidden) - 1:
        self.sow("intermediates", PROBE, x)
      x = act(x)
    x = nn.Dense(self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype,
                 name="logits")(x)
    return x.astype(jnp.float32)
