"""Measurements of training that are not the loss: internal covariate shift (ICS).

Santurkar et al. (2018, Def. 2.1) measure the shift a layer sees as the change in
its gradient caused by the simultaneous update of the layers before it:
  G  = grad of the loss w.r.t. layer k's parameters at the current parameters,
  G' = the same gradient after every earlier layer took its SGD step, W_j - lr * G_j,
with layer k and the later ones unchanged, on the same batch. ICS is reported as
||G - G'|| (and relative to ||G||) and as cos(G, G'): 0 and 1 when nothing shifts.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bn_repro import data


def _global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(jnp.asarray(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def _dot(a: Any, b: Any) -> jax.Array:
  return jnp.asarray(sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def gradient_shift(
  loss_fn: Callable[[Any], jax.Array],
  params: dict,
  learning_rate: float,
  order: list[str],
  layers: list[str],
) -> dict[str, jax.Array]:
  """Santurkar et al.'s ICS of each top-level module of `params` named in `layers`.

  `order` lists the top-level modules in forward order; "earlier layers" of module
  k are those before it (for the MLP: the dense and BN layers below it).
  Returns {"ics/<layer>/l2", "ics/<layer>/rel", "ics/<layer>/cos"}.
  """
  grads = jax.grad(loss_fn)(params)
  out = {}
  for name in layers:
    earlier = order[: order.index(name)]
    moved = {
      k: (jax.tree.map(lambda p, g: p - learning_rate * g, v, grads[k]) if k in earlier else v)
      for k, v in params.items()
    }
    g, g2 = grads[name], jax.grad(loss_fn)(moved)[name]
    diff = _global_norm(jax.tree.map(jnp.subtract, g, g2))
    norm, norm2 = _global_norm(g), _global_norm(g2)
    out[f"ics/{name}/l2"] = diff
    out[f"ics/{name}/rel"] = diff / jnp.maximum(norm, 1e-12)
    out[f"ics/{name}/cos"] = _dot(g, g2) / jnp.maximum(norm * norm2, 1e-24)
  return out


def ics_probe(
  config: ml_collections.ConfigDict,
  model: Any,
  train_ds: data.ArrayDataset,
  *,
  preprocess: Callable,
  loss: Callable,
  rngs: dict[str, jax.Array],
) -> Callable[[Any], dict[str, float]]:
  """state -> ICS of every layer with a weight matrix, on one fixed training batch.

  `model` must be built without a device axis (axis_name=None): the probe runs on
  one device with the whole global batch, whose BN statistics equal the
  cross-device ones of training. `loss(logits, labels)` is per example; dropout and
  BN noise are drawn from the fixed `rngs`, so both gradients see the same masks.
  The step is plain SGD at config.optimizer.learning_rate (momentum left out).
  """
  idx = data.train_batch_indices(len(train_ds), config.batch_size, config.seed + 17, 0, 1)[0]
  images = preprocess(jnp.asarray(train_ds.images[idx]), jnp.float32)
  labels = jnp.asarray(train_ds.labels[idx])
  lr = config.optimizer.learning_rate
  # Forward order = creation order, seen while tracing init (pytrees, and so eval_shape's
  # result and restored checkpoints, sort dict keys).
  order: list[str] = []

  def init():
    variables = model.init(jax.random.PRNGKey(0), images[:2])
    order.extend(variables["params"])
    return variables

  jax.eval_shape(init)

  @jax.jit
  def probe(params, batch_stats):
    def loss_fn(p):
      logits, _ = model.apply(
        {"params": p, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        rngs=rngs,
      )
      return loss(logits, labels).mean()

    layers = [k for k in order if "kernel" in params[k]]
    return gradient_shift(loss_fn, dict(params), lr, order, layers)

  return lambda state: {
    k: float(v) for k, v in jax.device_get(probe(state.params, state.batch_stats)).items()
  }
