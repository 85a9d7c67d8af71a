"""Sec. 3.3's scale invariance measured on the paper's MNIST network: scaling one layer's
weights by a leaves the gradient with respect to that layer's input unchanged and divides
the weights' gradient by a, with BN; without BN both change."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bn_repro import models
from bn_repro.claims.verdicts import Claim, judged
from bn_repro.report.tables import fmt

LAYER = "dense1"  # the scaled layer: its input is the first hidden layer's output
TOLERANCE = 1e-3  # relative; BN's epsilon inside the square root breaks exactness slightly


def at_unit_scale(config: Any) -> Any:
  """`config` started LeCun-normal (N(0, 1/fan_in)): each layer's Wu of about unit variance,
  so that BN's epsilon (1e-5) changes the identity by about 1e-5 / a². From the paper's
  small N(0, 0.01²) start Var[Wu] is about 1e-3 and epsilon alone moves the gradients by
  about 1%: the identity holds up to epsilon / Var[Wu], whatever the weights."""
  config = config.copy_and_resolve_references()
  config.model.init_std, config.model.init_fan_in = 1.0, True
  return config


def _relative(a: Any, b: Any) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)


def deviations(config: Any, scale: float, batch: int = 60) -> tuple[float, float]:
  """Relative change of d loss / d (layer input) and of scale · d loss / d W when LAYER's
  kernel W becomes scale · W (training mode, batch statistics), at initialization."""
  model = models.build(config, axis_name=None, dtype=jnp.float32)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, config.model.num_classes, batch))
  variables = model.init(jax.random.PRNGKey(config.seed), x, train=False)
  params, stats = variables["params"], variables.get("batch_stats", {})

  @jax.jit
  def hidden_grad(params):
    # d loss / d h, h = the first hidden layer's output, via a perturbation added to it:
    # equal to d loss / d (LAYER's input).
    def loss(params, delta):
      def add(next_fun, args, kwargs, context):  # LAYER's input plus delta
        if context.module.name == LAYER and context.method_name == "__call__":
          args = (args[0] + delta,) + tuple(args[1:])
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(add):
        logits, _ = model.apply(
          {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    delta = jnp.zeros((batch, config.model.hidden[0]), jnp.float32)
    return jax.grad(loss, argnums=(0, 1))(params, delta)

  g_params, g_h = hidden_grad(params)
  scaled = jax.tree_util.tree_map_with_path(
    lambda path, v: v * scale if jax.tree_util.keystr(path) == f"['{LAYER}']['kernel']" else v,
    params,
  )
  s_params, s_h = hidden_grad(scaled)
  dw = _relative(scale * s_params[LAYER]["kernel"], g_params[LAYER]["kernel"])
  return _relative(s_h, g_h), dw


def scale_invariance(
  bn_config: Any, nobn_config: Any, scales: Sequence[float] = (0.5, 10.0)
) -> Claim:
  """The claim, measured at each scale a (BN's epsilon inside the square root makes the
  identity approximate, to about epsilon / (a² Var[Wu]): small a is off by more)."""
  bn_config, nobn_config = at_unit_scale(bn_config), at_unit_scale(nobn_config)
  rows = {a: (deviations(bn_config, a), deviations(nobn_config, a)) for a in scales}
  worst = max(max(bn) for bn, _ in rows.values())
  text = "; ".join(
    f"a = {a:g}: with BN {fmt(bn[0], '.1e')} / {fmt(bn[1], '.1e')}, without BN "
    f"{fmt(nobn[0], '.2g')} / {fmt(nobn[1], '.2g')}"
    for a, (bn, nobn) in rows.items()
  )
  return Claim(
    "Gradient scale",
    "With BN, backpropagation is unaffected by the scale of a layer's weights: the "
    "gradient to its input stays the same and the weights' gradient scales by 1/a.",
    "Sec. 3.3",
    f"relative change of d loss / d input / of a · d loss / d W when W becomes a·W "
    f"({LAYER}, at a LeCun-normal initialization, a batch of 60): {text}",
    judged(worst < TOLERANCE),
  )
