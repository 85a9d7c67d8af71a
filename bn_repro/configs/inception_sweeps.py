"""The five ImageNet variants as sweeps: at CPU scale (configs/inception_small.py) and full size.

Sweeps (`--sweep=configs/inception_sweeps.py:<name>`):
  small_five  inception, bn_baseline, bn_x5, bn_x30, bn_x5_sigmoid of configs/inception_small.py
              (MNIST by default; add --override=data.name=cifar10 for CIFAR-10)
  full_five   the same five at paper size (configs/inception_imagenet.py)

Offline on the IDX files of the 10,000-image MNIST test set, 2,000 steps each:
  python -m bn_repro.sweep --sweep=configs/inception_sweeps.py:small_five --workdir=runs/small_five \
    --parallel=2 --override=data.source=idx --override=data.idx_dir=../shared/data/mnist-t10k \
    --override='data.train_split=test[:8000]' --override='data.eval_split=test[8000:]' \
    --override=num_steps=2000
  python scripts/sweep_report.py --sweep_dir=runs/small_five
"""

from bn_repro import sweep as sw
from bn_repro.configs import inception_imagenet

VARIANTS = inception_imagenet.VARIANTS


def _five(base_file: str, description: str) -> sw.Sweep:
  return sw.Sweep(
    base=f"{base_file}:inception",
    grid=sw.axis(sw.CONFIG_KEY, [f"{base_file}:{v}" for v in VARIANTS]),
    description=description,
  )


def small_five() -> sw.Sweep:
  return _five("inception_small.py", "Small BN-Inception, the paper's five variants (Sec. 4.2.1)")


def full_five() -> sw.Sweep:
  return _five("inception_imagenet.py", "BN-Inception on ImageNet, the paper's five variants")


SWEEPS = {"small_five": small_five, "full_five": full_five}


def get_sweep(name: str) -> sw.Sweep:
  """The sweep `name`; one of SWEEPS."""
  return sw.pick(SWEEPS, name, "configs/inception_sweeps.py")
