"""im2col convolutions (bn_repro/models/conv.py) against a NumPy loop and XLA's convolution."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bn_repro import validation
from bn_repro.configs import inception_small
from bn_repro.errors import UserError
from bn_repro.models import conv, inception

NHWC = ("NHWC", "HWIO", "NHWC")

# (input h, w, channels), (kernel h, w, out), strides, padding
CASES = [
  ((7, 7, 3), (1, 1, 5), (1, 1), "SAME"),
  ((7, 6, 3), (1, 1, 5), (2, 2), "SAME"),
  ((7, 7, 3), (3, 3, 4), (1, 1), "SAME"),
  ((8, 7, 3), (3, 3, 4), (2, 2), "SAME"),
  ((9, 9, 2), (3, 3, 4), (2, 1), "VALID"),
  ((11, 10, 3), (7, 7, 4), (2, 2), "SAME"),
  ((6, 7, 2), (2, 3, 3), (1, 2), ((1, 0), (2, 1))),
]
# Negative padding crops. XLA:CPU's own convolution gives wrong values here (jax 0.10.2:
# off by up to 8.5 from the definition, sometimes reading garbage), so only NumPy judges it.
CROPPED = ((8, 8, 2), (3, 3, 3), (1, 1), ((-1, 1), (0, -1)))


def _data(case, seed=0):
  (h, w, c), (kh, kw, o), strides, padding = case
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, h, w, c)).astype(np.float32)
  k = rng.standard_normal((kh, kw, c, o)).astype(np.float32)
  return x, k, strides, padding


def _numpy_conv(x, k, strides, padding):
  """Direct definition: y[n,a,b,o] = sum_{i,j,c} xpad[n, a*sh+i, b*sw+j, c] k[i,j,c,o]."""
  kh, kw, _, o = k.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  (t, b), (l, r) = padding
  xp = np.pad(x, ((0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0)), (0, 0)))
  xp = xp[:, max(-t, 0) : xp.shape[1] - max(-b, 0), max(-l, 0) : xp.shape[2] - max(-r, 0)]
  out_h = (xp.shape[1] - kh) // strides[0] + 1
  out_w = (xp.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], out_h, out_w, o), np.float64)
  for a in range(out_h):
    for bb in range(out_w):
      window = xp[:, a * strides[0] : a * strides[0] + kh, bb * strides[1] : bb * strides[1] + kw]
      y[:, a, bb] = np.einsum("nijc,ijco->no", window.astype(np.float64), k.astype(np.float64))
  return y


def _xla(x, k, strides, padding):
  return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


def _im2col(x, k, strides, padding):
  return conv.im2col_conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_forward_equals_numpy_definition_and_xla(case):
  x, k, strides, padding = _data(case)
  y = np.asarray(_im2col(x, k, strides, padding))
  ref = _numpy_conv(x, k, strides, padding)
  assert y.shape == ref.shape == _xla(x, k, strides, padding).shape
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, _xla(x, k, strides, padding), rtol=1e-5, atol=1e-5)


def test_negative_padding_crops_as_the_definition_says():
  x, k, strides, padding = _data(CROPPED)
  np.testing.assert_allclose(
    _im2col(x, k, strides, padding), _numpy_conv(x, k, strides, padding), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_gradients_equal_xla(case):
  x, k, strides, padding = _data(case)
  probe = np.random.default_rng(1).standard_normal(_xla(x, k, strides, padding).shape)

  def loss(f, x, k):
    return jnp.sum(f(x, k, strides, padding) * probe)

  ours = jax.grad(functools.partial(loss, _im2col), argnums=(0, 1))(x, k)
  theirs = jax.grad(functools.partial(loss, _xla), argnums=(0, 1))(x, k)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_flax_conv_calls_it_the_way_flax_passes_arguments():
  import flax.linen as nn

  x = np.random.default_rng(0).standard_normal((2, 9, 9, 3)).astype(np.float32)
  ours = nn.Conv(
    4, (3, 3), strides=2, padding="SAME", conv_general_dilated=conv.im2col_conv_general_dilated
  )
  plain = nn.Conv(4, (3, 3), strides=2, padding="SAME")
  variables = plain.init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
  np.testing.assert_allclose(
    ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(feature_group_count=3),  # the depthwise stem
    dict(rhs_dilation=(2, 2)),
    dict(lhs_dilation=(2, 1)),
  ],
)
def test_other_convolutions_go_to_xla_unchanged(kwargs):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
  groups = kwargs.get("feature_group_count", 1)
  k = rng.standard_normal((3, 3, 3 // groups, 6)).astype(np.float32)
  args = (x, k, (1, 1), ((1, 1), (1, 1)))
  np.testing.assert_array_equal(
    conv.im2col_conv_general_dilated(*args, dimension_numbers=NHWC, **kwargs),
    lax.conv_general_dilated(*args, dimension_numbers=NHWC, **kwargs),
  )


def test_bfloat16_stays_bfloat16():
  x, k, strides, padding = _data(CASES[3])
  y = _im2col(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), strides, padding)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(y, np.float32), _numpy_conv(x, k, strides, padding), rtol=0.05, atol=0.1
  )


def test_auto_is_im2col_on_cpu_only():
  assert conv.resolve("auto", "cpu") == "im2col"
  assert conv.resolve("auto", "gpu") == "xla"
  assert conv.resolve("auto", "tpu") == "xla"
  assert conv.resolve("xla", "cpu") == "xla"
  assert conv.resolve("im2col", "gpu") == "im2col"
  assert conv.conv_general_dilated("xla") is lax.conv_general_dilated
  with pytest.raises(ValueError, match="cudnn"):
    conv.resolve("cudnn")


@pytest.mark.slow
def test_small_inception_trains_the_same_with_either_convolution():
  """One BN training step of the small BN-Inception: outputs, gradients, statistics agree."""
  x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
  y = np.arange(8) % 10
  small = functools.partial(
    inception.bn_inception,
    num_classes=10,
    width_multiplier=0.125,
    modules=("3a", "3c"),
    stem="small",
    stem_stride=2,
    separable_stem=False,
  )
  # (eager init runs each XLA convolution op by op, which compiles slowly: init once)
  v = small(conv_impl="im2col").init(jax.random.PRNGKey(0), x, train=False)
  shapes = jax.eval_shape(
    functools.partial(small(conv_impl="xla").init, train=False), jax.random.PRNGKey(0), x
  )
  assert jax.tree.map(np.shape, v) == jax.tree.map(np.shape, shapes)  # the same parameters
  outs = {}
  for impl in ("xla", "im2col"):
    model = small(conv_impl=impl)

    def loss(params, model=model):
      logits, upd = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[np.arange(8), y]), upd

    outs[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
  ((l0, u0), g0), ((l1, u1), g1) = outs["xla"], outs["im2col"]
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((u0, g0)), jax.tree.leaves((u1, g1))):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)


def test_unknown_conv_impl_is_a_config_error():
  c = inception_small.get_config("bn_x5")
  validation.validate(c)
  c.model.conv_impl = "cudnn"
  with pytest.raises(UserError, match="config.model.conv_impl"):
    validation.validate(c)
  with pytest.raises(ValueError, match="cudnn"):
    jax.eval_shape(
      inception.bn_inception(stem="small", modules=(), conv_impl="cudnn").init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32),
    )
