"""The five ImageNet variants (configs/inception_imagenet.py) at a scale a laptop CPU trains in minutes.

Variant `<paper variant>` or `<paper variant>,<dataset>`, dataset `mnist` (default) or `cifar10`:
  bn-repro --config=configs/inception_small.py:bn_x5 --workdir=runs/small/bn_x5
  bn-repro --config=configs/inception_small.py:bn_x30,cifar10 --workdir=runs/small_cifar/bn_x30
Offline on the IDX files of the 10,000-image MNIST test set:
  bn-repro --config=configs/inception_small.py:inception --workdir=runs/small/inception \
    --config.data.source=idx --config.data.idx_dir=../shared/data/mnist-t10k \
    --config.data.train_split='test[:8000]' --config.data.eval_split='test[8000:]'

Same network family (BN-Inception modules; a 3x3/2 stem, so 28x28 inputs reach 3a at 14x14;
width x1/8; modules 3a 3b 3c 4a) and the
same differences between variants as the paper (learning rates in ratio 1 : 5 : 30, dropout,
LRN, L2 and decay speed), with the base learning rate raised from 0.0015 to 0.01 so that the
baseline learns within a few thousand steps of batch 32.
"""

import ml_collections

from bn_repro.configs import inception_imagenet

DATASETS = {
  "mnist": dict(name="mnist", train_split="train", eval_split="test"),
  "cifar10": dict(name="cifar10", train_split="train", eval_split="test"),
}


def get_config(variant: str = "bn_x5") -> ml_collections.ConfigDict:
  """`variant` is '<paper variant>[,<mnist|cifar10>]'."""
  paper_variant, _, dataset = variant.partition(",")
  dataset = dataset or "mnist"
  if dataset not in DATASETS:
    raise ValueError(
      f"unknown dataset {dataset!r} in variant {variant!r}; choose one of {', '.join(DATASETS)}"
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
  c.data = ml_collections.ConfigDict(
    dict(
      source="tfds", tfds_data_dir="", idx_dir="", image_size=0, distortion=1.0, **DATASETS[dataset]
    )
  )
  c.optimizer.base_learning_rate = 0.01
  c.optimizer.weight_decay = 4e-5
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
  return inception_imagenet.apply_variant(c, paper_variant)
