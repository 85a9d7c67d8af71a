"""BN-Inception and the Inception baseline: table shapes, parameter counts, BN/LRN/dropout.

Full-size models are only traced (`jax.eval_shape`), never run; real forward passes use
tiny variants (width 1/8, a few modules, the small stem, 28x28x1 inputs).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn_repro import bn_layer, models
from bn_repro.configs import mnist_mlp
from bn_repro.models import inception

# The paper's appendix table, copied independently of the model code:
# (#1x1, #3x3 reduce, #3x3, #double-3x3 reduce, #double-3x3, pool proj; 0 = absent).
PAPER_TABLE = {
  "3a": (64, 64, 64, 64, 96, 32),
  "3b": (64, 64, 96, 64, 96, 64),
  "3c": (0, 128, 160, 64, 96, 0),
  "4a": (224, 64, 96, 96, 128, 128),
  "4b": (192, 96, 128, 96, 128, 128),
  "4c": (160, 128, 160, 128, 160, 128),
  "4d": (96, 128, 192, 160, 192, 128),
  "4e": (0, 128, 192, 192, 256, 0),
  "5a": (352, 192, 320, 160, 224, 128),
  "5b": (352, 192, 320, 192, 224, 128),
}

# Pinned counts of the `params` collection at 1000 classes (equal to `table_params` below).
PINNED = {
  ("bn", 128, True): 11_278_528,
  ("bn", 96, True): 11_188_288,
  ("bn", 128, False): 11_285_224,
  ("baseline", 128, True): 11_268_512,
  ("baseline", 96, True): 11_178_336,
}

TINY = dict(num_classes=10, width_multiplier=0.125, modules=("3a", "3c"), stem="small")
TINY_INPUT = (4, 28, 28, 1)  # one shape for every real forward pass: compiled ops are reused


def tiny_input(seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).uniform(size=TINY_INPUT), jnp.float32)


def tiny_variables(model: nn.Module, seed: int = 0):
  """Variables shaped as `model.init` makes them, filled by numpy.

  Avoids compiling XLA's random number generators (slow on a shared 2-core machine):
  kernels ~ N(0, 2 / fan_in), BN scale and population variance 1, the rest 0.
  """
  abstract = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct(TINY_INPUT, jnp.float32),
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / math.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
    return (jnp.ones if name in ("scale", "var") else jnp.zeros)(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def conv_params(k: int, cin: int, cout: int, bn: bool) -> int:
  """k x k kernel, plus BN's gamma and beta (2 per channel) or a bias (1 per channel)."""
  return k * k * cin * cout + (2 if bn else 1) * cout


def module_params(row, cin: int, bn: bool) -> tuple[int, int]:
  """(parameters, output channels) of one table row given its input channels."""
  b1, r3, c3, rd, cd, proj = row
  n = conv_params(1, cin, b1, bn) if b1 else 0
  n += conv_params(1, cin, r3, bn) + conv_params(3, r3, c3, bn)
  n += conv_params(1, cin, rd, bn) + conv_params(3, rd, cd, bn) + conv_params(3, cd, cd, bn)
  n += conv_params(1, cin, proj, bn) if proj else 0
  return n, b1 + c3 + cd + (proj if proj else cin)


def table_params(bn: bool, proj_4cd: int, separable: bool, classes: int = 1000) -> int:
  """Whole-network count by arithmetic on the table (the independent reference)."""
  if separable:  # depthwise 7x7, multiplier 8 (no bias), then 1x1 to 64
    n = 7 * 7 * 3 * 8 + conv_params(1, 24, 64, bn)
  else:
    n = conv_params(7, 3, 64, bn)
  n += conv_params(1, 64, 64, bn) + conv_params(3, 64, 192, bn)
  cin = 192
  for name, row in PAPER_TABLE.items():
    if name in ("4c", "4d"):
      row = row[:5] + (proj_4cd,)
    m, cin = module_params(row, cin, bn)
    n += m
  return n + cin * classes + classes


def num_values(tree) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(tree))


@functools.cache
def traced(kind: str, proj: int = 128, separable: bool = True):
  """(logits, variables) of a full model on a (2, 224, 224, 3) batch, shapes only."""
  make = inception.bn_inception if kind == "bn" else inception.inception_baseline
  model = make(pool_proj_4cd=proj, separable_stem=separable)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  return jax.eval_shape(
    lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False, mutable=True), x
  )


def expected_stages(proj: int) -> dict[str, tuple[int, int, int]]:
  c4cd = 576 if proj == 96 else 608
  return {
    "conv1": (112, 112, 64),
    "pool1": (56, 56, 64),
    "conv2": (56, 56, 192),
    "pool2": (28, 28, 192),
    "3a": (28, 28, 256),
    "3b": (28, 28, 320),
    "3c": (14, 14, 576),
    "4a": (14, 14, 576),
    "4b": (14, 14, 576),
    "4c": (14, 14, c4cd),
    "4d": (14, 14, c4cd),
    # 4e passes 4d's output through: 192 + 256 + 4d's channels.
    "4e": (7, 7, 448 + c4cd),
    "5a": (7, 7, 1024),
    "5b": (7, 7, 1024),
  }


@pytest.mark.parametrize("kind,proj", [("bn", 128), ("bn", 96), ("baseline", 128)])
def test_full_model_logits_and_stage_shapes_follow_the_table(kind, proj):
  logits, variables = traced(kind, proj)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  inter = dict(variables["intermediates"])
  # The probe: pooled pre-nonlinearity of 5b's last double-3x3 conv, (batch, channels).
  (probe,) = inter.pop(models.PROBE)
  assert {k: v[0].shape for k, v in inter.items()} == {
    k: (2,) + v for k, v in expected_stages(proj).items()
  }
  assert probe.shape == (2, 224)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_parameter_counts_pinned_and_equal_to_table_arithmetic(key):
  kind, proj, separable = key
  _, variables = traced(kind, proj, separable)
  n = num_values(variables["params"])
  assert n == PINNED[key]
  assert n == table_params(kind == "bn", proj, separable)


def test_count_params_helper_agrees():
  model = inception.bn_inception(**TINY)
  n = num_values(tiny_variables(model)["params"])
  assert inception.count_params(model, TINY_INPUT) == n
  # Small stem 3x3 1->24, 3a (in 24) and 3c (in 32) at width 1/8, classifier 64 -> 10.
  m3a, c = module_params((8, 8, 8, 8, 12, 4), 24, bn=True)
  m3c, c = module_params((0, 16, 20, 8, 12, 0), c, bn=True)
  assert n == conv_params(3, 1, 24, bn=True) + m3a + m3c + c * 10 + 10


@pytest.mark.parametrize("kind", ["bn", "baseline"])
def test_module_3a_parameters_by_hand(kind):
  bn = kind == "bn"
  per_channel = 2 if bn else 1  # BN's gamma and beta, or a conv bias
  # Input 192 channels; branches 1x1(64) | 1x1(64)-3x3(64) | 1x1(64)-3x3(96)-3x3(96) | proj 32.
  expected = (
    192 * 64
    + per_channel * 64
    + 192 * 64
    + per_channel * 64
    + 9 * 64 * 64
    + per_channel * 64
    + 192 * 64
    + per_channel * 64
    + 9 * 64 * 96
    + per_channel * 96
    + 9 * 96 * 96
    + per_channel * 96
    + 192 * 32
    + per_channel * 32
  )
  assert expected == (219_072 if bn else 218_592)
  _, variables = traced(kind)
  assert num_values(variables["params"]["inception_3a"]) == expected


def conv_layers(params, path=()):
  """(path, dict) of every ConvBN layer (a dict holding a 'conv' entry)."""
  if "conv" in params:
    yield path, params
  for k, v in params.items():
    if isinstance(v, dict) and k != "conv":
      yield from conv_layers(v, path + (k,))


@pytest.mark.parametrize("kind", ["bn", "baseline"])
def test_conv_bias_only_without_bn(kind):
  _, variables = traced(kind)
  params = variables["params"]
  layers = list(conv_layers(params))
  assert len(layers) == 3 + 10 * 7 - 2 * 2  # stem 3; 7 per module, 3c and 4e lack 2
  for path, layer in layers:
    if kind == "bn":
      assert "bias" not in layer["conv"], path
      assert set(layer["bn"]) == {"scale", "bias"}, path
    else:
      assert "bias" in layer["conv"] and "bn" not in layer, path
  assert "bias" not in params["stem_conv1_depthwise"]
  assert params["stem_conv1_depthwise"]["kernel"].shape == (7, 7, 1, 24)
  assert "bias" in params["logits"]
  assert ("batch_stats" in variables) == (kind == "bn")


def naive_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  out = np.empty_like(x)
  for i in range(c):
    lo, hi = max(0, i - (size - 1) // 2), min(c, i + size // 2 + 1)
    s = np.sum(x[..., lo:hi] ** 2, axis=-1)
    out[..., i] = x[..., i] / (k + alpha / size * s) ** beta
  return out


@pytest.mark.parametrize("size,alpha", [(5, 1e-4), (3, 0.5), (4, 0.1)])
def test_lrn_matches_caffe_formula(size, alpha):
  x = jnp.asarray(np.random.default_rng(0).normal(0.0, 40.0, (2, 3, 3, 9)), jnp.float32)
  y = inception.local_response_norm(x, size=size, alpha=alpha)
  np.testing.assert_allclose(y, naive_lrn(x, size, alpha), rtol=1e-5)
  assert np.max(np.abs(np.asarray(y) - np.asarray(x))) > 1e-2  # not the identity here


@pytest.mark.parametrize("stem,calls", [("imagenet", 2), ("small", 1)])
def test_lrn_only_when_asked(monkeypatch, stem, calls):
  counted, original = [], inception.local_response_norm

  def counting_lrn(x, *a, **kw):
    counted.append(x.shape)
    return original(x, *a, **kw)

  monkeypatch.setattr(inception, "local_response_norm", counting_lrn)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  for use_lrn in (False, True):
    model = inception.Inception(
      num_classes=10, width_multiplier=0.125, modules=("3a",), stem=stem, use_lrn=use_lrn
    )
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    counted.clear()
    jax.eval_shape(model.apply, variables, x)  # traces the forward pass once
    assert len(counted) == (calls if use_lrn else 0)
  if stem == "imagenet":  # after the first max pool and after the 3x3 stem conv
    assert counted == [(2, 8, 8, 8), (2, 8, 8, 24)]
  assert inception.inception_baseline().use_lrn and not inception.bn_inception().use_lrn


@pytest.mark.slow
def test_dropout_only_in_training():
  # BN-Baseline-like: BN and dropout (the same ops as the other tiny tests, already compiled).
  model = inception.bn_inception(dropout_rate=0.4, **TINY)
  x, variables = tiny_input(), tiny_variables(model)

  def train(rng, m=model):
    return m.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])[0]

  # rbg keys: XLA compiles their generator much faster than threefry's.
  r1, r2 = jax.random.key(2, impl="rbg"), jax.random.key(3, impl="rbg")
  assert not np.allclose(train(r1), train(r2))
  eval1 = model.apply(variables, x, train=False, rngs={"dropout": r1})
  eval2 = model.apply(variables, x, train=False, rngs={"dropout": r2})
  np.testing.assert_array_equal(eval1, eval2)
  np.testing.assert_array_equal(eval1, model.apply(variables, x))
  no_dropout = model.clone(dropout_rate=0.0)
  np.testing.assert_array_equal(train(r1, no_dropout), train(r2, no_dropout))
  assert inception.inception_baseline().dropout_rate == 0.4
  assert inception.inception_baseline().norm is None
  assert inception.bn_inception().dropout_rate == 0.0


def test_tiny_bn_variant_updates_statistics_only_in_training():
  model = inception.bn_inception(**TINY)
  x, variables = tiny_input(), tiny_variables(model)
  stats = variables["batch_stats"]
  logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), stats, updated["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every mean, var and count moved
  _, after_eval = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, stats, after_eval["batch_stats"])
  # One mean/var per feature map of every convolution: shape (channels,).
  layers = list(conv_layers(variables["params"]))
  assert len(layers) == 1 + 2 * 7 - 2  # small stem 1; 7 per module, 3c lacks 2
  for path, layer in layers:
    channels = layer["conv"]["kernel"].shape[-1]
    bn_stats = functools.reduce(lambda t, k: t[k], path, stats)["bn"]
    assert bn_stats["mean"].shape == bn_stats["var"].shape == (channels,), path
  # The width-1/8 stages: 28x28 -> 3c at 14x14.
  _, inter = model.apply(variables, x, mutable=["intermediates"])
  shapes = {k: v[0].shape for k, v in inter["intermediates"].items()}
  # 3a: 8 + 8 + 12 + 4; 3c: 20 + 12 + 32 passed through; probe: 3c's double-3x3, 96 / 8.
  assert shapes == {
    "conv1": (4, 28, 28, 24),
    "3a": (4, 28, 28, 32),
    "3c": (4, 14, 14, 64),
    models.PROBE: (4, 12),
  }


@pytest.mark.slow
def test_nonlinearities_build_and_are_used():
  x = tiny_input()
  outs = []
  for nonlinearity in ("sigmoid", "relu", "tanh"):
    model = inception.bn_inception(nonlinearity=nonlinearity, **TINY)
    variables = tiny_variables(model)
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
    outs.append(logits)
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_width_scaling_and_module_validation():
  assert inception.scale_channels(32, 0.125) == 4
  assert inception.scale_channels(96, 0.125) == 12
  assert inception.scale_channels(20, 0.125) == inception.MIN_CHANNELS
  assert inception.scale_channels(0, 0.125) == 0
  assert inception.module_spec("4c", 1.0, 96).pool_proj == 96
  assert inception.module_spec("4a", 1.0, 96).pool_proj == 128
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  for bad in [dict(modules=("3b", "3a")), dict(modules=("6a",)), dict(stem="tiny")]:
    with pytest.raises(ValueError):
      jax.eval_shape(inception.Inception(**{**TINY, **bad}).init, jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("name,use_bn", [("bn_inception", True), ("inception", False)])
def test_registry_builds_from_config(name, use_bn):
  c = mnist_mlp.get_config()
  c.model.name = name
  c.model.use_bn = use_bn
  c.model.nonlinearity = "relu"
  c.model.dropout_rate = 0.0 if use_bn else 0.4
  c.model.use_lrn = not use_bn
  c.model.width_multiplier = 0.125
  c.model.modules = ("3a", "3b", "3c", "4a")  # (only traced here)
  c.model.stem = "small"
  c.model.stem_stride = 1
  c.model.separable_stem = True
  c.model.pool_proj_4cd = 96
  c.model.init_std = 2.0**0.5
  assert name in models.NAMES
  model = models.build(c, axis_name=None, dtype=jnp.float32)
  assert isinstance(model, inception.Inception)
  assert (model.norm is not None) == use_bn
  assert model.norm is None or model.norm.func is bn_layer.BatchNorm
  assert (model.modules, model.stem, model.use_lrn, model.dropout_rate, model.pool_proj_4cd) == (
    ("3a", "3b", "3c", "4a"),
    "small",
    not use_bn,
    c.model.dropout_rate,
    96,
  )
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
  assert ("batch_stats" in variables) == use_bn
  # What the trainer's evaluation reads: probe[0][:, unit] of a (batch, channels) array.
  _, inter = jax.eval_shape(
    functools.partial(model.apply, train=False, mutable=["intermediates"]), variables, x
  )
  assert inter["intermediates"][models.PROBE][0].shape == (3, 16)
