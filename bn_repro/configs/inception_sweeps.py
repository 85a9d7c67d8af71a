"""The five ImageNet variants as sweeps: at CPU scale (inception_small.py) and full size.

Sweeps (`--sweep=inception_sweeps:<name>[,<preset>]`, a data preset of
bn_repro/configs/common.py applied to every point):
  small_five  inception, bn_baseline, bn_x5, bn_x30, bn_x5_sigmoid of inception_small.py
              (MNIST by default; add --override=data.name=cifar10 for CIFAR-10)
  small_five_seeds  the same over seeds 0, 1, 2 (REPORT.md: steps to Inception's best with
              their spread over seeds)
  full_five   the same five at paper size (inception_imagenet.py)

Offline on the IDX files of the 10,000-image MNIST test set (first 8,000 train, last 2,000
eval; BN_REPRO_MNIST_DIR the directory holding t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz]), 2,000 steps each:
  export BN_REPRO_MNIST_DIR=DIR
  bn-repro-sweep --sweep=inception_sweeps:small_five,t10k --workdir=runs/small_five \
    --parallel=2 --override=num_steps=2000
  python scripts/sweep_report.py --sweep_dir=runs/small_five
Measured so (docs/RESULTS.md, Inception): max eval accuracy 0.9695 Inception, 0.9835
BN-Baseline, 0.9865 BN-x5, 0.9895 BN-x30, 0.941 BN-x5-Sigmoid; BN-x5 and BN-x30 reach
Inception's best in about half its steps (700 and 800 vs 1,400).
"""

from bn_repro.configs import common, inception_imagenet
from bn_repro.sweeps import grid as sw

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


def small_five_seeds() -> sw.Sweep:
  """small_five over seeds 0, 1, 2: Figure 3's steps to Inception's best with their spread."""
  sweep = small_five()
  return sw.Sweep(
    base=sweep.base,
    grid=sw.product(
      sw.axis(sw.CONFIG_KEY, [p[sw.CONFIG_KEY] for p in sweep.grid]), sw.axis("seed", (0, 1, 2))
    ),
    description=sweep.description + ", 3 seeds",
  )


SWEEPS = {"small_five": small_five, "small_five_seeds": small_five_seeds, "full_five": full_five}


def get_sweep(arg: str) -> sw.Sweep:
  """`arg` is '<one of SWEEPS>[,<preset>]'."""
  choice = common.parse(arg, "inception_sweeps.py", {"sweep": tuple(SWEEPS)}, required=["sweep"])
  return common.sweep_with_preset(SWEEPS[choice["sweep"]](), choice[common.PRESET])
