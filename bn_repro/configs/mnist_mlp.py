"""The paper's MNIST experiment (Sec. 4.1, Figure 1): 784-100-100-100-10 MLP, SGD, batch 60.

Argument: a variant, bn_sigmoid (default), nobn_sigmoid, bn_relu, nobn_relu, bn_tanh or
nobn_tanh, and optionally a data preset (bn_repro/configs/common.py), e.g. bn_sigmoid,t10k.

Figure 1 with tfds MNIST (needs a prepared dataset, see README):
  bn-repro --config=mnist_mlp:bn_sigmoid --workdir=runs/fig1/bn
  bn-repro --config=mnist_mlp:nobn_sigmoid --workdir=runs/fig1/nobn
  python scripts/figure1.py --bn=runs/fig1/bn --nobn=runs/fig1/nobn --out=runs/fig1

Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval),
DIR the directory holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]:
  export BN_REPRO_MNIST_DIR=DIR
  bn-repro --config=mnist_mlp:bn_sigmoid,t10k --workdir=runs/t10k/bn
  bn-repro --config=mnist_mlp:nobn_sigmoid,t10k --workdir=runs/t10k/nobn

Not stated in the paper and chosen here (docs/DEVIATIONS.md): plain SGD with learning rate
0.5; weights N(0, 0.01^2), the paper's "small random Gaussian values"; BN epsilon 1e-5, EMA
decay 0.99; the paper's binary image with pixels >= 128 -> 1, else 0
(--config.data.binarize=False: greyscale / 255 in [0, 1]); the probe of Figure 1(b, c) in the
training network (probe_network). Expected on the t10k 8k/2k split: eval accuracy with BN
about 0.84 at step 250, 0.94 at 5,000 and 0.96 at 50,000; without BN at chance (about 0.1)
through step 1,000, about 0.65 at 5,000 and 0.92 at 50,000.
"""

import ml_collections

from bn_repro.configs import common

VARIANTS = ("bn_sigmoid", "nobn_sigmoid", "bn_relu", "nobn_relu", "bn_tanh", "nobn_tanh")


def get_config(arg: str = "bn_sigmoid") -> ml_collections.ConfigDict:
  """Paper preset; `arg` is '<bn|nobn>_<sigmoid|relu|tanh>[,<preset>]'."""
  choice = common.parse(arg, "mnist_mlp.py", {"variant": VARIANTS})
  bn, nonlinearity = choice["variant"].split("_")
  c = common.get_config()

  c.model.name = "mlp"
  c.model.hidden = (100, 100, 100)
  c.model.num_classes = 10
  c.model.nonlinearity = nonlinearity
  c.model.use_bn = bn == "bn"
  # The paper's "small random Gaussian values": weights ~ N(0, 0.01^2), whatever the fan-in
  # (docs/DEVIATIONS.md; init_fan_in=True: N(0, init_std^2 / fan_in), 1.0 for LeCun normal).
  c.model.init_std = 0.01
  c.model.init_fan_in = False
  # "wu": g(BN(Wu)) (paper) | "after_act": BN(g(Wu+b)) | "u": g(W BN(u)+b)
  c.model.bn_position = "wu"
  c.model.dropout_rate = 0.0  # dropout after each hidden layer
  c.model.probe_unit = 0  # which unit of the last hidden layer Figure 1(b, c) tracks

  c.data.binarize = True  # "a 28x28 binary image"
  c.optimizer.learning_rate = 0.5
  c.batch_size = 60
  c.num_steps = 50_000
  c.log_every = 250
  c.eval_every = 250
  c.checkpoint_every = 5_000
  return common.apply_preset(c, choice[common.PRESET], "mnist_mlp.py")
