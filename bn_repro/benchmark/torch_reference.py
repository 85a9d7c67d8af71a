"""PyTorch eager references of two bn_repro networks, for the benchmark (scripts/benchmark.py).

PyTorch is optional and never a dependency of bn_repro: this module imports it only
inside functions, so importing this module works without it; `available()` says
whether it can be used. It holds, as the usual eager training loop (zero_grad,
forward, loss, backward, optimizer.step, one host batch per step through
torch.from_numpy), with PyTorch's default thread count and torch.manual_seed(0):

  MlpLoop        the MNIST MLP of bn_repro/configs/mnist_mlp.py (784-100-100-100-10, sigmoid,
                 BN before each nonlinearity or none, plain SGD, batch 60);
  InceptionLoop  the small BN-Inception of inception_small:bn_x5 (28x28x1,
                 batch 32, SGD with momentum, L2 on kernels, staircase lr decay).

Both read their hyperparameters from the same configs as bn_repro, and the Inception
takes its channel counts from bn_repro.models.inception's table, so the two stay in
step; `param_count_matches()` checks that the PyTorch Inception has as many trainable
parameters as ours (BN population statistics are buffers in PyTorch and a separate
collection in ours, so neither count includes them).

Differences that do not change shapes, parameters or work per step:
  * Stride-2 convolutions and max pools pad one pixel on each side (PyTorch's usual
    padding=1) where TensorFlow's 'SAME', which ours uses, pads (0, 1): the sampling
    grid is shifted by one pixel, the output sizes are the same.
  * PyTorch's BN running variance uses the unbiased batch variance; ours (unbiased=False)
    the biased one. Training-mode outputs do not depend on either.
  * Weights are drawn by PyTorch's generator (same distributions, other values).

  python -m bn_repro.benchmark.torch_reference   # parameter counts and a short timing of each loop
"""

import functools
import math
import sys
import time

import numpy as np

INCEPTION_CONFIG = "bn_x5"  # variant of bn_repro/configs/inception_small.py
INPUT_SHAPE = (28, 28, 1)  # MNIST, NHWC as bn_repro takes it


def available() -> bool:
  """Whether PyTorch can be imported."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def version() -> str:
  """PyTorch's version string (needs PyTorch)."""
  import torch

  return torch.__version__


def _init_gaussian_(weight, std: float, fan_in_scaled: bool):
  """N(0, std^2) or N(0, std^2 / fan_in) in place, as `common.gaussian_init`."""
  import torch

  fan_in = weight[0].numel()  # Linear [out, in], Conv [out, in, kh, kw]
  with torch.no_grad():
    weight.normal_(0.0, std / math.sqrt(fan_in) if fan_in_scaled else std)


@functools.cache
def _inception_modules():
  """ConvBNReLU and InceptionModule, torch.nn classes.

  Defined on first use, so that this module imports without torch.
  """
  import torch
  from torch import nn

  class ConvBNReLU(nn.Sequential):
    """Convolution (no bias) -> BatchNorm2d -> ReLU, as ConvBN + the nonlinearity."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float, momentum: float):
      super().__init__(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout, eps=eps, momentum=momentum),
        nn.ReLU(inplace=True),
      )

  class InceptionModule(nn.Module):
    """1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool(-1x1) branches, concatenated over channels."""

    def __init__(self, cin: int, spec, eps: float, momentum: float):
      super().__init__()
      conv = functools.partial(ConvBNReLU, eps=eps, momentum=momentum)
      s = spec
      self.b1x1 = conv(cin, s.b1x1, 1, 1) if s.b1x1 else None
      self.b3x3 = nn.Sequential(
        conv(cin, s.b3x3_reduce, 1, 1), conv(s.b3x3_reduce, s.b3x3, 3, s.stride)
      )
      self.d3x3 = nn.Sequential(
        conv(cin, s.d3x3_reduce, 1, 1),
        conv(s.d3x3_reduce, s.d3x3, 3, 1),
        conv(s.d3x3, s.d3x3, 3, s.stride),
      )
      if s.pool == "avg":
        pool = nn.AvgPool2d(3, s.stride, padding=1, count_include_pad=False)
      elif s.pool == "max":
        pool = nn.MaxPool2d(3, s.stride, padding=1)
      else:
        raise ValueError(f"pool {s.pool!r} is not 'avg' or 'max'")
      self.pool = nn.Sequential(pool, conv(cin, s.pool_proj, 1, 1)) if s.pool_proj else pool
      self.out_channels = s.b1x1 + s.b3x3 + s.d3x3 + (s.pool_proj or cin)

    def forward(self, x):
      branches = [] if self.b1x1 is None else [self.b1x1(x)]
      branches += [self.b3x3(x), self.d3x3(x), self.pool(x)]
      return torch.cat(branches, dim=1)

  return ConvBNReLU, InceptionModule


@functools.cache
def _small_inception_class():
  """SmallInception: a torch.nn class defined on first use, like `_inception_modules`."""
  from torch import nn

  ConvBNReLU, InceptionModule = _inception_modules()

  class SmallInception(nn.Module):
    """Small stem (3x3 conv) -> Inception modules -> global mean -> Linear, on NCHW."""

    def __init__(self, config):
      super().__init__()
      from bn_repro.models import inception

      m, bn = config.model, config.bn
      eps, momentum = bn.epsilon, 1.0 - bn.decay
      stem = inception.scale_channels(192, m.width_multiplier)
      layers = [ConvBNReLU(INPUT_SHAPE[-1], stem, 3, m.stem_stride, eps, momentum)]
      cin = stem
      for name in m.modules:
        spec = inception.module_spec(name, m.width_multiplier, m.pool_proj_4cd)
        layers.append(InceptionModule(cin, spec, eps, momentum))
        cin = layers[-1].out_channels
      self.features = nn.Sequential(*layers)
      self.logits = nn.Linear(cin, m.num_classes)
      for module in self.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
          _init_gaussian_(module.weight, m.init_std, m.init_fan_in)
          if module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x):
      return self.logits(self.features(x).mean(dim=(2, 3)))

  return SmallInception


def _small_inception(config):
  """The small BN-Inception of `config` (configs/inception_small.py), NCHW input."""
  return _small_inception_class()(config)


def _mlp(config):
  """Dense (no bias) -> BatchNorm1d -> sigmoid per hidden layer, or Dense (bias) -> sigmoid."""
  from torch import nn

  m, bn = config.model, config.bn
  layers, cin = [], math.prod(INPUT_SHAPE)
  for width in m.hidden:
    layers.append(nn.Linear(cin, width, bias=not m.use_bn))
    if m.use_bn:
      layers.append(nn.BatchNorm1d(width, eps=bn.epsilon, momentum=1.0 - bn.decay))
    layers.append(nn.Sigmoid())
    cin = width
  layers.append(nn.Linear(cin, m.num_classes))
  net = nn.Sequential(*layers)
  for module in net:
    if isinstance(module, nn.Linear):
      _init_gaussian_(module.weight, m.init_std, m.init_fan_in)
      if module.bias is not None:
        nn.init.zeros_(module.bias)
  return net


def _num_params(net) -> int:
  """Trainable parameters (BN running statistics are buffers, not counted)."""
  return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _check_mlp_config(config):
  m = config.model
  if (
    m.nonlinearity != "sigmoid"
    or m.bn_position != "wu"
    or m.dropout_rate
    or config.optimizer.momentum
    or config.optimizer.weight_decay
  ):
    raise ValueError(
      "torch_reference.MlpLoop builds only the sigmoid MLP with BN before the "
      "nonlinearity, no dropout, plain SGD without weight decay"
    )


def _check_inception_config(config):
  m = config.model
  if (
    not m.use_bn
    or m.nonlinearity != "relu"
    or m.use_lrn
    or m.dropout_rate
    or m.stem != "small"
    or m.separable_stem
  ):
    raise ValueError(
      "torch_reference.InceptionLoop builds only BN-Inception with ReLU, the "
      "small stem, no LRN and no dropout (inception_small:bn_x5)"
    )


def _inception_config():
  from bn_repro.configs import inception_small

  config = inception_small.get_config(INCEPTION_CONFIG)
  _check_inception_config(config)
  return config


def our_inception_params() -> int:
  """Trainable parameters of bn_repro's small BN-Inception (jax.eval_shape, no allocation)."""
  import jax.numpy as jnp

  from bn_repro import models
  from bn_repro.models import inception

  model = models.build(_inception_config(), axis_name=None, dtype=jnp.float32)
  return inception.count_params(model, (1,) + INPUT_SHAPE)


def param_count_matches(net=None) -> tuple[int, int]:
  """(ours, PyTorch's) trainable parameter counts of the small BN-Inception.

  Args:
    net: the PyTorch network to count; None builds one.

  Returns:
    The two counts, equal.

  Raises:
    ValueError: if they differ, i.e. the PyTorch network is not the one our config builds.
  """
  import torch

  if net is None:
    torch.manual_seed(0)
    net = _small_inception(_inception_config())
  ours, theirs = our_inception_params(), _num_params(net)
  if ours != theirs:
    raise ValueError(
      f"PyTorch small BN-Inception has {theirs:,} trainable parameters, "
      f"bn_repro's ({INCEPTION_CONFIG}) {ours:,}: the two networks differ"
    )
  return ours, theirs


class _EagerLoop:
  """One eager step: a batch through torch.from_numpy, zero_grad, forward, loss, backward, step."""

  sched = None

  def _one(self):
    import torch
    import torch.nn.functional as F

    idx = self.rng.integers(0, len(self.images), self.batch)
    x = torch.from_numpy(self.images[idx]).float().div_(255.0)
    y = torch.from_numpy(self.labels[idx])
    self.opt.zero_grad()
    self.loss = F.cross_entropy(self.net(x), y)
    self.loss.backward()
    self.opt.step()
    if self.sched is not None:
      self.sched.step()

  def run(self):
    for _ in range(self.steps):
      self._one()


class MlpLoop(_EagerLoop):
  """The MNIST MLP's eager PyTorch training loop: `steps` SGD steps per `run()`.

  Each step draws a batch of 60 indices from a NumPy Generator (seed 0), converts the
  uint8 images and labels with torch.from_numpy, scales the pixels to [0, 1], and does
  zero_grad, forward, softmax cross-entropy, backward, optimizer.step(). The
  constructor does one warm-up step.

  Attributes:
    steps: steps per `run()`.
    batch: examples per step.
    num_params: trainable parameters.
    loss: the last step's loss (a scalar tensor).
  """

  def __init__(self, use_bn: bool, images: np.ndarray, labels: np.ndarray, steps: int):
    """Builds the network and optimizer of bn_repro/configs/mnist_mlp.py and takes one step.

    Args:
      use_bn: BN before each sigmoid (variant bn_sigmoid) or none (nobn_sigmoid).
      images: uint8 [N, 28, 28, 1].
      labels: int [N].
      steps: steps per `run()`.
    """
    import torch

    from bn_repro.configs import mnist_mlp

    config = mnist_mlp.get_config("bn_sigmoid" if use_bn else "nobn_sigmoid")
    _check_mlp_config(config)
    torch.manual_seed(0)
    self.net = _mlp(config)
    self.net.train()
    self.opt = torch.optim.SGD(self.net.parameters(), lr=config.optimizer.learning_rate)
    self.num_params = _num_params(self.net)
    self.images = np.ascontiguousarray(images.reshape(len(images), -1))
    self.labels = np.asarray(labels, np.int64)  # cross_entropy's class indices are int64
    self.rng = np.random.default_rng(0)
    self.steps, self.batch = steps, config.batch_size
    self._one()


class InceptionLoop(_EagerLoop):
  """The small BN-Inception's eager PyTorch training loop: `steps` steps of batch 32 per `run()`.

  inception_small:bn_x5: SGD with momentum 0.9, L2 weight decay on the
  convolution and classifier weights only (not on biases or BN's scale and offset),
  the learning rate times 0.94 every lr_decay_epochs epochs (staircase, an epoch being
  len(images) / 32 steps), BN in training mode. Each step draws 32 indices from a NumPy
  Generator (seed 0) and converts the batch with torch.from_numpy. The constructor checks
  the parameter count against ours (`param_count_matches`) and does one warm-up step.

  Attributes:
    steps: steps per `run()`.
    batch: examples per step (32).
    num_params: trainable parameters (equal to ours).
    loss: the last step's loss (a scalar tensor).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, steps: int):
    """Builds the network and optimizer and takes one step.

    Args:
      images: uint8 [N, 28, 28, 1].
      labels: int [N].
      steps: steps per `run()`.
    """
    import torch

    config = _inception_config()
    o = config.optimizer
    torch.manual_seed(0)
    self.net = _small_inception(config)
    self.net.train()
    self.num_params = param_count_matches(self.net)[1]
    # Conv and Linear weights are the only parameters with more than one dimension.
    decayed = [p for p in self.net.parameters() if p.ndim > 1]
    others = [p for p in self.net.parameters() if p.ndim <= 1]
    self.opt = torch.optim.SGD(
      [
        {"params": decayed, "weight_decay": o.weight_decay},
        {"params": others, "weight_decay": 0.0},
      ],
      lr=o.learning_rate,
      momentum=o.momentum,
    )
    self.steps, self.batch = steps, config.batch_size
    self.sched = None
    if o.lr_decay_epochs > 0 and o.lr_decay_rate != 1.0:
      every = max(1, round(o.lr_decay_epochs * len(images) / self.batch))
      self.sched = torch.optim.lr_scheduler.StepLR(self.opt, every, gamma=o.lr_decay_rate)
    self.images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # NCHW
    self.labels = np.asarray(labels, np.int64)
    self.rng = np.random.default_rng(0)
    self._one()


def main():
  if not available():
    print("torch_reference: PyTorch is not installed", file=sys.stderr)
    sys.exit(1)
  ours, theirs = param_count_matches()
  print(
    f"PyTorch {version()}; small BN-Inception ({INCEPTION_CONFIG}) trainable parameters: "
    f"ours {ours:,}, PyTorch {theirs:,}"
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8000,) + INPUT_SHAPE, dtype=np.uint8)
  labels = rng.integers(0, 10, 8000).astype(np.int32)
  for name, loop in (
    ("MLP bn", MlpLoop(True, images, labels, 200)),
    ("MLP nobn", MlpLoop(False, images, labels, 200)),
    ("small BN-Inception", InceptionLoop(images, labels, 10)),
  ):
    t = time.perf_counter()
    loop.run()
    rate = loop.steps / (time.perf_counter() - t)
    print(
      f"{name:<20}{rate:>8.0f} steps/s  ({rate * loop.batch:.0f} images/s, "
      f"loss {loop.loss.item():.3f})"
    )


if __name__ == "__main__":
  main()
