"""Sweeps over the MNIST MLP (mnist_mlp.py): Figure 1 and learning-rate sensitivity.

Sweeps (`--sweep=mnist_sweeps:<name>[,<preset>]`, a data preset of
bn_repro/configs/common.py applied to every point):
  lr_grid  sigmoid/ReLU x BN on/off x learning rate 0.01..10 (7 values) x seeds 0, 1, 2:
           84 runs; a train loss above 1e3 stops a run as diverged. Tests the paper's
           claims that BN allows higher learning rates and makes sigmoid nets trainable
           (Sec. 3.3, 4.2.1).
  figure1  the sigmoid net with and without BN at the paper preset (Figure 1 a, b, c).
  seeds    the BN sigmoid net at the paper preset, seeds 0..7: the spread over seeds; the
           points differ only in seed, so `--batched` trains them as one program.

With tfds MNIST (see README):
  bn-repro-sweep --sweep=mnist_sweeps:lr_grid --workdir=runs/lr --parallel=2
  python scripts/sweep_report.py --sweep_dir=runs/lr

Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval;
BN_REPRO_MNIST_DIR the directory holding t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz]), 5,000 steps per run:
  export BN_REPRO_MNIST_DIR=DIR
  bn-repro-sweep --sweep=mnist_sweeps:lr_grid,t10k --workdir=runs/lr_t10k --parallel=2 \
    --override=num_steps=5000
  python scripts/sweep_report.py --sweep_dir=runs/lr_t10k
What they measured: docs/RESULTS.md.

Figure 1 the same way (`:figure1,t10k`, `--workdir=runs/fig1`); `--print_commands` prints one
command per point instead of running them (for a cluster's job array). The 8 seeds in one
batched program, 2,000 steps each, offline as above (add --parallel=2 for two programs of 4
seeds side by side, the fastest on 2 cores):
  bn-repro-sweep --sweep=mnist_sweeps:seeds,t10k --workdir=runs/seeds_t10k --batched \
    --override=num_steps=2000
"""

from bn_repro.configs import common
from bn_repro.sweeps import grid as sw

BASE = "mnist_mlp.py:bn_sigmoid"  # relative to this file
ALIASES = {
  "model.use_bn": "bn",
  "model.nonlinearity": "nonlinearity",
  "optimizer.learning_rate": "lr",
  "seed": "seed",
}
LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SEEDS = (0, 1, 2)


def lr_grid() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.product(
      sw.axis("model.nonlinearity", ("sigmoid", "relu")),
      sw.axis("model.use_bn", (True, False)),
      sw.axis("optimizer.learning_rate", LEARNING_RATES),
      sw.axis("seed", SEEDS),
    ),
    fixed={"max_loss": 1e3},
    aliases=ALIASES,
    description="MNIST MLP: final accuracy vs learning rate, sigmoid/ReLU x BN on/off, "
    "3 seeds (Sec. 3.3 and 4.2.1 claims)",
  )


def figure1() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.axis("model.use_bn", (True, False)),
    aliases=ALIASES,
    description="MNIST MLP, sigmoid, with and without BN at the paper preset (Figure 1)",
  )


def seeds() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.axis("seed", range(8)),
    aliases=ALIASES,
    description="MNIST MLP, sigmoid with BN at the paper preset, 8 seeds (spread over seeds)",
  )


SWEEPS = {"lr_grid": lr_grid, "figure1": figure1, "seeds": seeds}


def get_sweep(arg: str) -> sw.Sweep:
  """`arg` is '<one of SWEEPS>[,<preset>]'."""
  choice = common.parse(arg, "mnist_sweeps.py", {"sweep": tuple(SWEEPS)}, required=["sweep"])
  return common.sweep_with_preset(SWEEPS[choice["sweep"]](), choice[common.PRESET])
