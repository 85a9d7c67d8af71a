"""The paper's MNIST experiment (Sec. 4.1, Figure 1): 784-100-100-100-10 MLP, SGD, batch 60.

Variants: bn_sigmoid (default), nobn_sigmoid, bn_relu, nobn_relu, bn_tanh, nobn_tanh.

Figure 1 with tfds MNIST (needs a prepared dataset, see README):
  bn-repro --config=configs/mnist_mlp.py:bn_sigmoid --workdir=runs/fig1/bn
  bn-repro --config=configs/mnist_mlp.py:nobn_sigmoid --workdir=runs/fig1/nobn
  python scripts/figure1.py --bn=runs/fig1/bn --nobn=runs/fig1/nobn --out=runs/fig1

Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval):
  bn-repro --config=configs/mnist_mlp.py:bn_sigmoid --workdir=runs/t10k/bn \
    --config.data.source=idx --config.data.idx_dir=../shared/data/mnist-t10k \
    --config.data.train_split='test[:8000]' --config.data.eval_split='test[8000:]'

Not stated in the paper and chosen here: plain SGD with learning rate 0.5, weights
N(0, 1/fan_in), inputs scaled to [0, 1], BN epsilon 1e-5, EMA decay 0.99.
Expected on the t10k 8k/2k split: eval accuracy at step 250 about 0.92 with BN
and 0.2-0.4 without; both about 0.96 at step 5,000.
"""

import ml_collections

from bn_repro import models

VARIANTS = ("bn_sigmoid", "nobn_sigmoid", "bn_relu", "nobn_relu", "bn_tanh", "nobn_tanh")


def get_config(variant: str = "bn_sigmoid") -> ml_collections.ConfigDict:
  """Paper preset; `variant` is '<bn|nobn>_<sigmoid|relu|tanh>'."""
  if variant not in VARIANTS:
    raise ValueError(
      f"unknown variant {variant!r} of configs/mnist_mlp.py; choose one of {', '.join(VARIANTS)}"
    )
  bn, nonlinearity = variant.split("_")
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden = (100, 100, 100)
  c.model.num_classes = 10
  c.model.nonlinearity = nonlinearity
  c.model.use_bn = bn == "bn"
  c.model.init_std = 1.0  # weights ~ N(0, init_std^2 / fan_in) when init_fan_in
  c.model.init_fan_in = True
  c.model.bn_position = (
    "wu"  # "wu": g(BN(Wu)) (paper) | "after_act": BN(g(Wu+b)) | "u": g(W BN(u)+b)
  )
  c.model.dropout_rate = 0.0  # dropout after each hidden layer
  c.model.probe_unit = 0  # which unit of the last hidden layer Figure 1(b, c) tracks

  c.bn = ml_collections.ConfigDict()
  c.bn.epsilon = 1e-5
  c.bn.decay = 0.99  # EMA: running <- decay * running + (1 - decay) * batch
  c.bn.population = "ema"  # or "average": Algorithm 2 recomputed before each eval
  c.bn.population_batches = 100  # training batches Algorithm 2 averages over
  c.bn.unbiased = False  # m/(m-1) on batch variances entering the population
  c.bn.cross_device = True  # batch statistics over the global batch (all devices)
  # Variants (bn_repro.BatchNorm): virtual_batch_size (ghost batches), renorm + renorm_*
  # (Batch Renormalization), noise_mean/noise_scale/noise_std (noisy BN), freeze_step.
  c.bn.update(models.bn_variant_defaults())

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"
  c.data.source = "tfds"  # or "idx": files in data.idx_dir
  c.data.tfds_data_dir = ""  # '' = tfds default (~/tensorflow_datasets)
  c.data.idx_dir = ""
  c.data.train_split = "train"
  c.data.eval_split = "test"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.5
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0  # L2 on kernels: adds weight_decay * w to the gradient
  c.optimizer.lr_decay_rate = 1.0  # learning rate *= lr_decay_rate every lr_decay_epochs
  c.optimizer.lr_decay_epochs = 0.0  # 0 = constant learning rate

  c.batch_size = 60  # global, split over devices
  c.eval_batch_size = 1000  # global
  c.num_steps = 50_000
  c.log_every = 250
  c.steps_per_call = 0  # > 0: at most this many steps per device call (0: up to the next log/eval)
  c.eval_every = 250
  c.checkpoint_every = 5_000
  c.target_accuracy = 0.0  # > 0: record the first step whose eval accuracy reaches it
  c.max_loss = 0.0
  c.eval_train_examples = 0  # > 0: also evaluate on this many training examples (train_eval/*)
  c.ics_probe = False  # at each eval: internal covariate shift per layer (bn_repro/analysis.py)  # > 0: a train loss above it counts as divergence, like NaN/Inf
  c.dtype = "float32"  # compute dtype: float32 or bfloat16 (params, BN statistics float32)
  c.num_devices = 0  # 0 = all local devices
  c.parallel = "pmap"  # or "shard_map": jax.jit + jax.shard_map over a device mesh
  c.tensorboard = True
  c.profile_start_step = -1  # >= 0: jax.profiler trace into <workdir>/profile from this step
  c.profile_num_steps = 0
  return c
