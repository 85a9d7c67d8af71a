"""The timed loops of the benchmark: ours next to baselines, each `run()` one round.

Every loop has `run()` (one timed round of `steps` steps), `steps`, `compile_seconds`
and, where it has one, `compiled` (the XLA program, for its memory analysis).
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bn_repro import configs, data, parallel, placement, training


def datasets(idx_dir: str) -> tuple[data.ArrayDataset, data.ArrayDataset]:
  """The t10k split from the IDX files in `idx_dir`, or random images of its shape."""
  if idx_dir:
    cfg = config("bn_sigmoid", idx_dir).data
    return data.load_splits(cfg)
  rng = np.random.default_rng(0)
  make = lambda n: data.ArrayDataset(
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    np.asarray(rng.integers(0, 10, n), np.int32),
  )
  return make(8000), make(2000)


def config(variant: str, idx_dir: str, hidden: int = 100):
  c = configs.get(f"mnist_mlp:{variant},t10k")
  c.num_devices = 1
  c.data.idx_dir = idx_dir
  c.model.hidden = (hidden,) * 3
  return c


class Ours:
  """bn_repro's training chunk, compiled once, timed without compilation; `hidden` units in
  each of the 3 hidden layers (the paper's 100 unless a placement crossover asks)."""

  def __init__(self, variant, train_ds, eval_ds, steps, hidden=100):
    c = config(variant, "", hidden)
    self.flops = placement.step_flops(c)
    self.trainer = training.Trainer(c, train_ds, eval_ds, parallel.devices(1))
    self.state = parallel.replicate(self.trainer.init_state(train_ds.images[:2]), self.trainer.devs)
    self.steps, self.pos = steps, 0
    t = time.perf_counter()
    self.run()
    self.compile_seconds = self.trainer.compile_seconds
    self.first_call_seconds = time.perf_counter() - t
    self.compiled = self.trainer.compiled(steps)

  def run(self):
    self.state, _, _ = self.trainer.train(self.state, self.pos, self.steps)
    self.pos += self.steps


class Floor:
  """The MLP step's matmuls and the SGD update only, in one lax.scan."""

  def __init__(self, train_ds, steps):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(train_ds), (steps, 60))
    self.x = jnp.asarray(train_ds.images[idx].reshape(steps, 60, -1), jnp.float32) / 255
    shapes = [(784, 100), (100, 100), (100, 100), (100, 10)]
    self.w = [jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.05) for s in shapes]

    def step(ws, x):
      hs = [x]
      for w in ws:
        hs.append(hs[-1] @ w)
      g = hs[-1]
      grads = [None] * len(ws)
      for i in reversed(range(len(ws))):
        grads[i] = hs[i].T @ g
        if i:
          g = g @ ws[i].T
      return [w - 1e-3 * dw for w, dw in zip(ws, grads)], None

    self.fn = jax.jit(lambda ws, xs: lax.scan(step, ws, xs)[0])
    t = time.perf_counter()
    self.compile_seconds = 0.0
    compiled = self.fn.lower(self.w, self.x).compile()
    self.compile_seconds = time.perf_counter() - t
    self.fn = self.compiled = compiled
    self.steps = steps

  def run(self):
    self.w = jax.block_until_ready(self.fn(self.w, self.x))


class FlaxMlp(nn.Module):
  """The paper's MLP written the usual Flax way, with flax.linen.BatchNorm."""

  use_bn: bool

  @nn.compact
  def __call__(self, x, train):
    x = x.reshape((x.shape[0], -1))
    for _ in range(3):
      x = nn.Dense(100, use_bias=not self.use_bn)(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, use_fast_variance=False)(x)
      x = nn.sigmoid(x)
    return nn.Dense(10)(x)


def flax_step(use_bn):
  """(init values, the jitted-to-be SGD step) of FlaxMlp: the plain Flax training step."""
  net, tx = FlaxMlp(use_bn), optax.sgd(0.5)
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)), train=False)
  params, stats = v["params"], v.get("batch_stats", {})

  def step(params, stats, opt, x, y):
    def loss_fn(p):
      logits, upd = net.apply(
        {"params": p, "batch_stats": stats},
        x.astype(jnp.float32) / 255,
        train=True,
        mutable=["batch_stats"],
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

    (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), upd.get("batch_stats", {}), opt, loss

  return (params, stats, tx.init(params)), step


class FlaxScan:
  """The plain Flax loop at its best: flax_step in one lax.scan over batches in device
  memory (no per-step dispatch), flax.linen.BatchNorm."""

  def __init__(self, use_bn, train_ds, steps):
    (params, stats, opt), step = flax_step(use_bn)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(train_ds), (steps, 60))
    self.xs = jnp.asarray(train_ds.images[idx])
    self.ys = jnp.asarray(train_ds.labels[idx])

    def body(carry, xy):
      *carry, loss = step(*carry, *xy)
      return tuple(carry), loss

    fn = jax.jit(lambda carry, xs, ys: lax.scan(body, carry, (xs, ys))[0])
    self.carry = (params, stats, opt)
    t = time.perf_counter()
    self.fn = self.compiled = fn.lower(self.carry, self.xs, self.ys).compile()
    self.compile_seconds = time.perf_counter() - t
    self.steps = steps

  def run(self):
    self.carry = jax.block_until_ready(self.fn(self.carry, self.xs, self.ys))


class PerStep:
  """The usual Flax loop: jax.jit(step) with flax.linen.BatchNorm, one dispatch per step."""

  def __init__(self, use_bn, train_ds, steps):
    (self.params, self.stats, self.opt), step = flax_step(use_bn)
    step = jax.jit(step)
    self.images, self.labels = train_ds.images, train_ds.labels
    self.rng = np.random.default_rng(0)
    self.step, self.steps = step, steps
    t = time.perf_counter()
    self._one()
    self.compile_seconds = time.perf_counter() - t
    self.compiled = step.lower(
      self.params, self.stats, self.opt, self.images[:60], self.labels[:60]
    ).compile()  # the program the loop runs

  def _one(self):
    idx = self.rng.integers(0, len(self.images), 60)
    self.params, self.stats, self.opt, self.loss = self.step(
      self.params, self.stats, self.opt, self.images[idx], self.labels[idx]
    )

  def run(self):
    for _ in range(self.steps):
      self._one()
    jax.block_until_ready(self.loss)


class Batched:
  """`runs` seeds of the MLP (BN) in one program (training.BatchedTrainer): run-steps/s."""

  def __init__(self, train_ds, eval_ds, steps, runs, spread=True):
    seeds = []
    for seed in range(runs):
      c = config("bn_sigmoid", "")
      c.seed = seed
      seeds.append(c)
    self.shards = parallel.run_shards(runs, 1) if spread else 1
    self.bt = training.BatchedTrainer(seeds, train_ds, eval_ds, parallel.devices(1), self.shards)
    self.states = self.bt.place(self.bt.initial_states())
    self.steps, self.pos = steps, 0
    t = time.perf_counter()
    self.run()
    self.compile_seconds = time.perf_counter() - t
    self.compiled = self.bt.compiled(steps)

  def run(self):
    self.states, _, _ = self.bt.train(self.states, self.pos, self.steps)
    self.pos += self.steps


class SmallInception:
  """Small BN-Inception (inception_small:bn_x5, MNIST-sized), forward + backward;
  `conv_impl` as config.model.conv_impl (models/conv.py)."""

  def __init__(self, train_ds, eval_ds, steps, conv_impl="auto"):
    c = configs.get("inception_small:bn_x5")
    c.model.conv_impl = conv_impl
    c.num_devices = 1
    self.trainer = training.Trainer(c, train_ds, eval_ds, parallel.devices(1))
    self.state = parallel.replicate(self.trainer.init_state(), self.trainer.devs)
    self.steps, self.pos, self.batch = steps, 0, c.batch_size
    self.run()
    self.compile_seconds = self.trainer.compile_seconds
    self.compiled = self.trainer.compiled(steps)

  def run(self):
    self.state, _, _ = self.trainer.train(self.state, self.pos, self.steps)
    self.pos += self.steps
