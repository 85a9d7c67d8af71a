"""Sequential MNIST with an LSTM, with and without recurrent BN (Cooijmans et al., 2016).

The paper leaves recurrent networks to future work; this is the BN-LSTM of "Recurrent
Batch Normalization": BN on W_x x_t, on W_h h_{t-1} and on c_t, statistics per time
step, gamma initialised to 0.1 (bn_repro/models/lstm.py).

Argument '<bn|nobn>[,<rows|pixels>][,<preset>]': rows (default) reads an image as 28 steps
of 28 pixels, pixels as 784 steps of 1 pixel (the paper's sequential MNIST; slow on a CPU);
the data presets are those of bn_repro/configs/common.py.
  bn-repro --config=seq_mnist:bn --workdir=runs/seq_mnist/bn
  bn-repro --config=seq_mnist:nobn --workdir=runs/seq_mnist/nobn
  bn-repro --config=seq_mnist:bn,pixels --workdir=runs/seq_mnist/bn_pixels
Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval),
DIR the directory holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]:
  BN_REPRO_MNIST_DIR=DIR bn-repro --config=seq_mnist:bn,t10k --workdir=runs/seq_mnist_t10k/bn

Everything but the model comes from bn_repro/configs/mnist_mlp.py. Chosen here: 100 hidden units,
batch 64 (Cooijmans et al.), SGD with momentum 0.9 at learning rate 0.1 for both
variants (they use RMSProp/Adam with gradient clipping, which the trainer does not
have; heavy-ball SGD is its closest tool), and BN epsilon 1e-2 (see below).
Measured on the t10k 8k/2k split, rows, 3,000 steps: eval accuracy 0.93 / 0.96 / 0.98
without BN at steps 250 / 500 / 3,000; with BN 0.44 / 0.71 / 0.92 and between 0.76 and
0.94 from step 750 on (EMA population), or 0.87 / 0.93 / 0.95 with
--config.bn.population=average (Algorithm 2). Here the BN-LSTM does not beat the LSTM.
"""

import ml_collections

from bn_repro.configs import common, mnist_mlp

SEQUENCES = ("rows", "pixels")


def get_config(arg: str = "bn") -> ml_collections.ConfigDict:
  """`arg` is '<bn|nobn>[,<rows|pixels>][,<preset>]'."""
  choice = common.parse(arg, "seq_mnist.py", {"variant": ("bn", "nobn"), "sequence": SEQUENCES})
  bn, sequence = choice["variant"], choice["sequence"]
  c = mnist_mlp.get_config(f"{bn}_tanh")
  c.model = ml_collections.ConfigDict()
  c.model.name = "lstm"
  c.model.sequence = sequence  # "rows": 28 steps of 28 pixels | "pixels": 784 steps of 1
  c.model.hidden = 100
  c.model.num_classes = 10
  c.model.nonlinearity = "tanh"  # the cell's input and output squashing (tanh: the LSTM)
  c.model.use_bn = bn == "bn"  # BN-LSTM: per-time-step BN on W_x x, W_h h and c
  c.model.bn_scale_init = 0.1  # initial gamma of the three BNs (Cooijmans et al.)
  c.model.forget_bias = 1.0  # initial forget-gate bias
  c.model.init_std = 1.0  # input kernel ~ N(0, init_std^2 / fan_in); recurrent: orthogonal
  c.model.init_fan_in = True
  c.model.probe_unit = 0  # read by the trainer; the LSTM sows no probe
  # Steps where almost every image is blank (the top and bottom rows) have a batch variance
  # near 0, and BN multiplies what differs there by up to 1/sqrt(epsilon); with the default
  # 1e-5 the BN-LSTM's gammas blow up and it stays near chance (0.14 at step 3,000).
  c.bn.epsilon = 1e-2
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.batch_size = 64
  c.num_steps = 3_000
  c.checkpoint_every = 1_000
  return common.apply_preset(c, choice[common.PRESET], "seq_mnist.py")
