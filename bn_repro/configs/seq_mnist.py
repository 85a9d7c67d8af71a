"""Sequential MNIST with an LSTM, with and without recurrent BN (Cooijmans et al., 2016).

The paper leaves recurrent networks to future work; this is the BN-LSTM of "Recurrent
Batch Normalization": BN on W_x x_t, on W_h h_{t-1} and on c_t, statistics per time
step, gamma initialised to 0.1 (bn_repro/models/lstm.py).

Variant '<bn|nobn>[,<rows|pixels>]': rows (default) reads an image as 28 steps of 28
pixels, pixels as 784 steps of 1 pixel (the paper's sequential MNIST; slow on a CPU).
  python -m bn_repro.main --config=configs/seq_mnist.py:bn --workdir=runs/seq_mnist/bn
  python -m bn_repro.main --config=configs/seq_mnist.py:nobn --workdir=runs/seq_mnist/nobn
  python -m bn_repro.main --config=configs/seq_mnist.py:bn,pixels --workdir=runs/seq_mnist/bn_pixels
Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval):
  python -m bn_repro.main --config=configs/seq_mnist.py:bn --workdir=runs/seq_mnist_t10k/bn \
    --config.data.source=idx --config.data.idx_dir=../shared/data/mnist-t10k \
    --config.data.train_split='test[:8000]' --config.data.eval_split='test[8000:]'
(`bn-repro` is the same command where the repository root is on PYTHONPATH: this file
imports configs/mnist_mlp.py.)

Everything but the model comes from configs/mnist_mlp.py. Chosen here: 100 hidden units,
batch 64 (Cooijmans et al.), SGD with momentum 0.9 at learning rate 0.1 for both
variants (they use RMSProp/Adam with gradient clipping, which the trainer does not
have; heavy-ball SGD is its closest tool), and BN epsilon 1e-2 (see below).
Measured on the t10k 8k/2k split, rows, 3,000 steps: eval accuracy 0.93 / 0.96 / 0.98
without BN at steps 250 / 500 / 3,000; with BN 0.44 / 0.71 / 0.92 and between 0.76 and
0.94 from step 750 on (EMA population), or 0.87 / 0.93 / 0.95 with
--config.bn.population=average (Algorithm 2). Here the BN-LSTM does not beat the LSTM.
"""

import ml_collections

from bn_repro.configs import mnist_mlp

SEQUENCES = ("rows", "pixels")


def get_config(variant: str = "bn") -> ml_collections.ConfigDict:
  """`variant` is '<bn|nobn>[,<rows|pixels>]'."""
  bn, _, sequence = variant.partition(",")
  sequence = sequence or "rows"
  if bn not in ("bn", "nobn") or sequence not in SEQUENCES:
    raise ValueError(
      f"unknown variant {variant!r} of configs/seq_mnist.py; choose '<bn|nobn>[,<rows|pixels>]'"
    )
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
  return c
