"""Figure 1's work written as a plain Flax program: the peer `scripts/benchmark.py --figure1`
times `scripts/figure1.sh` against.

  python -m bn_repro.benchmark.peer --idx_dir=DIR --bn=true [--steps=50000] [--every=250]

One process trains one net (loops.FlaxMlp, flax.linen.BatchNorm) the usual way: SGD steps in
`lax.scan` chunks of `--every` steps over batches gathered on the host, and after each chunk
(and at step 0) an evaluation like the package's: accuracy and loss on the eval split, and the
15th/50th/85th percentiles of the last hidden layer's first unit before its sigmoid on fixed
training batches in training mode. The timing harness runs one process a net, side by side, one
core each, as figure1.sh does; the peer draws no figure and writes one JSON line per evaluation.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from bn_repro.benchmark import loops

_IDX_DIR = flags.DEFINE_string("idx_dir", "", "IDX directory with t10k files; '' = random images.")
_BN = flags.DEFINE_bool("bn", True, "The net with BN (else without).")
_STEPS = flags.DEFINE_integer("steps", 50_000, "Training steps.")
_EVERY = flags.DEFINE_integer("every", 250, "Steps between evaluations.")
PROBE_BATCHES, BATCH = 34, 60


def train(idx_dir: str, use_bn: bool, steps: int, every: int) -> list[dict]:
  """Trains one net for `steps` steps, evaluating at step 0 and every `every` steps; one dict
  per evaluation (step, accuracy, loss, p15, p50, p85)."""
  train_ds, eval_ds = loops.datasets(idx_dir)
  (params, stats, opt), step = loops.flax_step(use_bn)
  net = loops.FlaxMlp(use_bn)
  # The last hidden layer's pre-sigmoid output: its BatchNorm's, or its Dense's without BN.
  layer = "BatchNorm_2" if use_bn else "Dense_2"

  def chunk(carry, xs, ys):
    def body(carry, xy):
      *carry, loss = step(*carry, *xy)
      return tuple(carry), loss

    return lax.scan(body, carry, (xs, ys))[0]

  @jax.jit
  def evaluate(params, stats, x, y, probe_x):
    v = {"params": params, "batch_stats": stats}
    logits = net.apply(v, x.astype(jnp.float32) / 255, train=False)
    loss = jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    acc = jnp.mean(jnp.argmax(logits, -1) == y)

    def probe(xb):
      _, inter = net.apply(
        v, xb.astype(jnp.float32) / 255, train=True, mutable=["intermediates", "batch_stats"],
        capture_intermediates=lambda m, _: m.name == layer,
      )  # fmt: skip
      (out,) = jax.tree.leaves(inter["intermediates"])
      return out[:, 0]

    q = jnp.percentile(jax.vmap(probe)(probe_x).reshape(-1), jnp.array([15.0, 50.0, 85.0]))
    return jnp.concatenate([jnp.stack([acc, loss]), q])

  run = jax.jit(chunk, donate_argnums=(0,))
  rng = np.random.default_rng(0)
  probe_x = jnp.asarray(train_ds.images[rng.integers(0, len(train_ds), (PROBE_BATCHES, BATCH))])
  eval_x, eval_y = jnp.asarray(eval_ds.images), jnp.asarray(eval_ds.labels)
  carry, rows = (params, stats, opt), []
  for done in range(0, steps + 1, every):
    if done:
      idx = rng.integers(0, len(train_ds), (every, BATCH))
      carry = run(carry, train_ds.images[idx], train_ds.labels[idx])
    out = np.asarray(evaluate(carry[0], carry[1], eval_x, eval_y, probe_x))
    rows.append(
      {"step": done, **dict(zip(("accuracy", "loss", "p15", "p50", "p85"), out.tolist()))}
    )
  return rows


def main(argv):
  del argv
  for row in train(_IDX_DIR.value, _BN.value, _STEPS.value, _EVERY.value):
    print(json.dumps(row))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
