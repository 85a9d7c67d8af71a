"""The five ImageNet variants (inception_imagenet.py) at a scale a laptop CPU trains in minutes.

Argument '<paper variant>[,<mnist|cifar10>][,<preset>]': variant bn_x5 by default, dataset
mnist (default) or cifar10 from tfds, or the data preset t10k (MNIST's IDX files; see
bn_repro/configs/common.py):
  bn-repro --config=inception_small:bn_x5 --workdir=runs/small/bn_x5
  bn-repro --config=inception_small:bn_x30,cifar10 --workdir=runs/small_cifar/bn_x30
Offline on the IDX files of the 10,000-image MNIST test set (first 8,000 train, last 2,000
eval), DIR the directory holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]:
  BN_REPRO_MNIST_DIR=DIR bn-repro --config=inception_small:inception,t10k \
    --workdir=runs/small/inception

Same network family (BN-Inception modules; a 3x3/2 stem, so 28x28 inputs reach 3a at 14x14;
width x1/8; modules 3a 3b 3c 4a) and the
same differences between variants as the paper (learning rates in ratio 1 : 5 : 30, dropout,
LRN, L2 and decay speed), with the base learning rate raised from 0.0015 to 0.01 so that the
baseline learns within a few thousand steps of batch 32.
Measured on the t10k 8k/2k split, 2,000 steps each (docs/RESULTS.md, Inception): max eval
accuracy 0.9695 Inception, 0.9835 BN-Baseline, 0.9865 BN-x5, 0.9895 BN-x30, 0.941
BN-x5-Sigmoid; BN-x5 and BN-x30 reach Inception's best in about half its steps (700 and 800
vs 1,400).
"""

import ml_collections

from bn_repro.configs import common, inception_imagenet

DATASETS = ("mnist", "cifar10")
DEFAULT = "bn_x5"


def get_config(arg: str = DEFAULT) -> ml_collections.ConfigDict:
  """`arg` is '<paper variant>[,<mnist|cifar10>][,<preset>]'."""
  choice = common.parse(
    arg,
    "inception_small.py",
    {"variant": inception_imagenet.VARIANTS, "dataset": DATASETS},
    {"variant": DEFAULT},
  )
  c = inception_imagenet.get_config("inception")  # the baseline's fields, then the variant's
  c.model.num_classes = 10
  c.model.width_multiplier = 0.125
  c.model.modules = ("3a", "3b", "3c", "4a")
  c.model.stem = "small"
  c.model.stem_stride = 2
  c.model.separable_stem = False
  c.bn.epsilon = 1e-5
  c.bn.decay = 0.99
  c.bn.virtual_batch_size = 0  # statistics over the whole batch of 32
  c.bn.cross_device = True
  c.data = common.get_config().data
  c.data.name = choice["dataset"]
  c.data.image_size = 0  # the dataset's own
  c.data.distortion = 1.0
  c.optimizer.base_learning_rate = 0.01
  c.optimizer.weight_decay = 4e-5
  c.optimizer.lr_decay_rate = 0.94
  c.optimizer.lr_decay_epochs = 2.0
  c.batch_size = 32
  c.eval_batch_size = 1000
  c.num_steps = 3000
  c.log_every = 100
  c.steps_per_call = 0
  c.eval_every = 100
  c.checkpoint_every = 1000
  c.target_accuracy = 0.0  # 0: the scripts use the baseline's best accuracy
  c.dtype = "float32"
  c = inception_imagenet.apply_variant(c, choice["variant"])
  return common.apply_preset(c, choice[common.PRESET], "inception_small.py")
