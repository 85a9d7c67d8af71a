"""Accelerator benchmark: BN-Inception at 224x224 with 32 images a device in float32 and
bfloat16 (images/s, step time, compile time, MFU), and the MNIST MLP's training loop (steps/s).

Its imports are jax, flax, optax, numpy, absl and bn_repro's model code only, with no
ml_collections, tensorflow_datasets or tensorboardX, so it runs on an accelerator image that
lacks them. The model's fields are those of inception_imagenet.py's BN-x5 (BN over each
device's 32 examples; tests/test_accelerator_benchmark.py checks them against the config).
Images are random and already on the devices: the numbers are the training step's.

FLOPs are counted from the forward pass's jaxpr: every convolution and matrix product, 2 per
multiply-add (3.9 GFLOP an image at 224x224). A training step's model FLOPs are 3 times the
forward's (the backward pass computes two products per forward one), and MFU is those per
second over the device's dense peak (`PEAKS`) at the step's dtype.
"""

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bn_repro import models, parallel

# Dense peak TFLOP/s per device by device_kind substring (first match): (bfloat16, float32).
# float32 is the TF32 tensor-core peak on NVIDIA GPUs since A100 (XLA's DEFAULT precision
# lets convolutions and matrix products use TF32) and the bfloat16 peak on TPUs (DEFAULT
# precision is one bfloat16 pass). Vendor data sheets, without sparsity.
PEAKS = (
  ("H200", (989.4, 494.7)),
  ("H100 PCIe", (756.0, 378.0)),
  ("H100", (989.4, 494.7)),
  ("A100", (312.0, 156.0)),
  ("L4", (121.0, 60.0)),
  ("V100", (125.0, 15.7)),
  ("TPU v6", (918.0, 918.0)),
  ("TPU v5 lite", (197.0, 197.0)),
  ("TPU v5", (459.0, 459.0)),
  ("TPU v4", (275.0, 275.0)),
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Fields(dict):
  """Config fields with attribute access, in place of an ml_collections.ConfigDict."""

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


# inception_imagenet.py's BN-x5 model and BN fields (tests check them against the config).
INCEPTION_MODEL = dict(
  name="inception",
  num_classes=1000,
  nonlinearity="relu",
  use_bn=True,
  dropout_rate=0.0,
  use_lrn=False,
  width_multiplier=1.0,
  modules=("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"),
  stem="imagenet",
  stem_stride=1,
  separable_stem=True,
  pool_proj_4cd=128,
  init_std=2**0.5,
  init_fan_in=True,
  conv_impl="auto",
)
INCEPTION_BN = dict(
  epsilon=1e-3,
  decay=0.9997,
  population="ema",
  unbiased=False,
  cross_device=False,
  virtual_batch_size=32,
)
# mnist_mlp.py's bn_sigmoid.
MLP_MODEL = dict(
  name="mlp",
  hidden=(100, 100, 100),
  num_classes=10,
  nonlinearity="sigmoid",
  use_bn=True,
  init_std=0.01,
  init_fan_in=False,
  bn_position="wu",
  dropout_rate=0.0,
)
MLP_BN = dict(epsilon=1e-5, decay=0.99, population="ema", unbiased=False, cross_device=True)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The dense peak of one device of `device_kind` at `dtype`, or None (unknown, e.g. CPU)."""
  for key, (bf16, fp32) in PEAKS:
    if key in device_kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def _sub_jaxprs(params: dict[str, Any]) -> list[tuple[Any, int]]:
  """(jaxpr, times it runs) of an equation's sub-programs."""
  out = []
  for key, value in params.items():
    times = params.get("length", 1) if key == "jaxpr" else 1
    for v in value if isinstance(value, (tuple, list)) else [value]:
      inner = getattr(v, "jaxpr", v)
      if hasattr(inner, "eqns"):
        out.append((inner, times))
  return out


def jaxpr_flops(jaxpr: Any) -> float:
  """2 x the multiply-adds of every convolution and matrix product in `jaxpr` (scan bodies
  times their length; each branch of a cond counted)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      macs_per_output = math.prod(rhs) / out_features
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * macs_per_output
    for inner, times in _sub_jaxprs(eqn.params):
      total += times * jaxpr_flops(inner)
  return total


def count_flops(fn: Callable, *args: Any, axis_env: list[tuple[str, int]] | None = None) -> float:
  """The FLOPs of one call of `fn(*args)` (jaxpr_flops of its traced program)."""
  return jaxpr_flops(jax.make_jaxpr(fn, axis_env=axis_env or [])(*args).jaxpr)


def build(model: dict[str, Any], bn: dict[str, Any], dtype: Any, axis_name: str | None):
  return models.build(Fields(model=Fields(model), bn=Fields(bn)), axis_name=axis_name, dtype=dtype)


def sgd_step(model: Any, tx: optax.GradientTransformation, dtype: Any, axis_name: str | None):
  """One device's SGD step: (params, batch_stats, opt_state), images, labels -> same, loss.
  Gradients are averaged over `axis_name`, BN statistics are the model's affair."""

  def step(carry, images, labels):
    params, batch_stats, opt_state = carry

    def loss_fn(p):
      logits, updates = model.apply(
        {"params": p, "batch_stats": batch_stats},
        images.astype(dtype),
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      return loss.mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return step


def _timed(fn: Any, args: tuple, steps: int) -> tuple[float, float, list[float]]:
  """(compile seconds, median step seconds, every step's seconds) of fn(carry, *rest) -> carry."""
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_seconds = time.perf_counter() - t
  carry, rest = args[0], args[1:]
  carry, loss = compiled(carry, *rest)  # warm-up
  jax.block_until_ready(loss)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    carry, loss = compiled(carry, *rest)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  if not np.all(np.isfinite(np.asarray(loss))):
    raise FloatingPointError("the benchmark's loss is not finite")
  return compile_seconds, statistics.median(times), times


def inception(
  dtype: str = "bfloat16",
  per_device_batch: int = 32,
  image_size: int = 224,
  steps: int = 20,
  model_overrides: dict[str, Any] | None = None,
  devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
  """BN-Inception's SGD step (momentum 0.9) data-parallel over `devices` (all local ones):
  images/s, step time, compile time, FLOPs, MFU."""
  devs = devices or jax.local_devices()
  n = len(devs)
  model_fields: dict[str, Any] = INCEPTION_MODEL | dict(model_overrides or {})
  classes = int(model_fields["num_classes"])
  bn = INCEPTION_BN | dict(virtual_batch_size=min(32, per_device_batch))
  model = build(model_fields, bn, DTYPES[dtype], axis_name=None)
  rng = np.random.default_rng(0)
  shape = (per_device_batch, image_size, image_size, 3)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2,) + shape[1:]), train=False)
  tx = optax.sgd(0.01, momentum=0.9)
  carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  images = rng.standard_normal((n,) + shape, dtype=np.float32)
  labels = rng.integers(0, classes, (n, per_device_batch)).astype(np.int32)
  step = sgd_step(model, tx, DTYPES[dtype], parallel.AXIS)
  forward = lambda v, x: model.apply(
    v, x.astype(DTYPES[dtype]), train=True, mutable=["batch_stats"]
  )
  flops = 3 * count_flops(forward, variables, images[0])
  fn = parallel.data_parallel(step, devs, donate_argnums=(0,))
  args = (parallel.replicate(carry, devs), *parallel.shard((images, labels), devs))
  compile_seconds, seconds, _ = _timed(fn, args, steps)
  peak = peak_tflops(devs[0].device_kind, dtype)
  return dict(
    benchmark="bn_inception",
    dtype=dtype,
    device_kind=devs[0].device_kind,
    devices=n,
    per_device_batch=per_device_batch,
    image_size=image_size,
    images_per_sec=n * per_device_batch / seconds,
    step_ms=1e3 * seconds,
    compile_seconds=compile_seconds,
    model_gflops_per_device_step=flops / 1e9,
    peak_tflops_per_device=peak,
    mfu=None if peak is None else flops / seconds / (1e12 * peak),
  )


def mnist_loop(steps: int = 1000, rounds: int = 5, batch: int = 60) -> dict[str, Any]:
  """The paper's MNIST MLP (BN, sigmoid, batch 60, SGD 0.5) as one lax.scan of `steps`
  steps on the first device, data on the device: steps/s (median over rounds)."""
  model = build(MLP_MODEL, MLP_BN, jnp.float32, axis_name=None)
  tx = optax.sgd(0.5)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 784)), train=False)
  carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((steps, batch, 784), dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, 10, (steps, batch)).astype(np.int32))
  step = sgd_step(model, tx, jnp.float32, None)

  def loop(carry, images, labels):
    carry, losses = jax.lax.scan(lambda c, xy: step(c, *xy), carry, (images, labels))
    return carry, losses

  fn = jax.jit(loop, donate_argnums=(0,))
  compile_seconds, seconds, _ = _timed(fn, (carry, images, labels), rounds)
  return dict(
    benchmark="mnist_mlp",
    device_kind=jax.local_devices()[0].device_kind,
    steps_per_call=steps,
    steps_per_sec=steps / seconds,
    compile_seconds=compile_seconds,
  )


def table(rows: list[dict[str, Any]]) -> list[str]:
  """The results as Markdown lines."""
  out = [
    "| benchmark | dtype | devices | images/s | step (ms) | compile (s) | model GFLOP/device-step "
    "| peak TFLOP/s/device | MFU |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if r["benchmark"] == "mnist_mlp":
      out.append(
        f"| MNIST MLP loop ({r['device_kind']}) | float32 | 1 | {r['steps_per_sec']:,.0f} steps/s "
        f"| {1e3 / r['steps_per_sec']:.3f} | {r['compile_seconds']:.1f} | | | |"
      )
      continue
    peak = r["peak_tflops_per_device"]
    out.append(
      f"| BN-Inception {r['image_size']}x{r['image_size']}, {r['per_device_batch']}/device "
      f"({r['device_kind']}) | {r['dtype']} | {r['devices']} | {r['images_per_sec']:,.1f} "
      f"| {r['step_ms']:.1f} | {r['compile_seconds']:.1f} "
      f"| {r['model_gflops_per_device_step']:.4g} "
      f"| {'unknown' if peak is None else peak} "
      f"| {'—' if r['mfu'] is None else format(r['mfu'], '.1%')} |"
    )
  return out
