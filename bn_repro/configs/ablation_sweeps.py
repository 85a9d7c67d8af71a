"""Ablations of the MNIST MLP (mnist_mlp.py): BN variants and the paper's four claimed
advantages, each a sweep that scripts/ablation_report.py turns into a figure.

Sweeps (`--sweep=ablation_sweeps:<name>[,<preset>]`, a data preset of
bn_repro/configs/common.py applied to every point), 3 seeds each:
  variants        plain BN vs each variant of bn_repro.BatchNorm at the paper preset:
                  ghost batches of 6 and 20, Batch Renormalization, noisy BN, BN frozen
                  after 1,000 steps, Algorithm-2 population statistics (unbiased), BN
                  after the nonlinearity and BN of the layer input u; and no BN.
  ics             advantage 1, internal covariate shift: BN / noisy BN / no BN with the
                  ICS probe (Santurkar et al.'s gradient change) at every evaluation.
  weight_scale    advantage 2, gradients independent of the parameters' scale: initial
                  weights N(0, a^2 / fan_in), a in {0.1, 1, 10}, BN on/off.
  regularization  advantage 3: dropout 0 / 0.3 x BN on/off, train-set accuracy evaluated
                  (train_eval/*) for the train-test gap, 3x the steps.
  Advantage 4 (saturating nonlinearities, higher learning rates) is
  mnist_sweeps:lr_grid with scripts/sweep_report.py.

Offline on the IDX files of the 10,000-image test set (first 8,000 train, last 2,000 eval;
BN_REPRO_MNIST_DIR the directory holding t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz]):
  export BN_REPRO_MNIST_DIR=DIR
  bn-repro-sweep --sweep=ablation_sweeps:variants,t10k --workdir=runs/abl/variants --parallel=2
  python scripts/ablation_report.py --variants=runs/abl/variants --report_dir=runs/abl/report
(the same for ics, weight_scale and regularization, each with its own --workdir and
report flag). With tfds MNIST drop ",t10k". What they measured: docs/RESULTS.md, "Ablations".
"""

from bn_repro.configs import common
from bn_repro.sweeps import grid as sw

BASE = "mnist_mlp.py:bn_sigmoid"  # relative to this file
STEPS = 5_000
SEEDS = (0, 1, 2)
ALIASES = {
  "model.use_bn": "bn",
  "seed": "seed",
  "bn.virtual_batch_size": "ghost",
  "bn.renorm": "renorm",
  "bn.noise_mean": "noise",
  "bn.freeze_step": "freeze",
  "bn.population": "pop",
  "model.bn_position": "place",
  "model.init_std": "a",
  "model.dropout_rate": "dropout",
}
# Batch Renormalization's warm-up, scaled from Ioffe (2017)'s 5k/40k/25k steps to STEPS.
RENORM = {
  "bn.renorm": True,
  "bn.renorm_start": 500,
  "bn.renorm_rmax_end": 4_000,
  "bn.renorm_dmax_end": 2_500,
}
# Noisy BN: per-step feature offsets in [-1, 1], gains in [1, 2], per-value spread 0.5.
NOISE = {"bn.noise_mean": 1.0, "bn.noise_scale": 2.0, "bn.noise_std": 0.5}


def _bn(**fields):
  return dict({"model.use_bn": True}, **fields)


def variants() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.product(
      sw.concat(
        [
          _bn(),
          {"model.use_bn": False},
          _bn(**{"bn.virtual_batch_size": 6}),
          _bn(**{"bn.virtual_batch_size": 20}),
          _bn(**RENORM),
          _bn(**NOISE),
          _bn(**{"bn.freeze_step": 1_000}),
          _bn(**{"bn.population": "average", "bn.unbiased": True}),
          _bn(**{"model.bn_position": "after_act"}),
          _bn(**{"model.bn_position": "u"}),
        ]
      ),
      sw.axis("seed", SEEDS),
    ),
    fixed={"num_steps": STEPS, "max_loss": 1e3},
    aliases=dict(
      ALIASES,
      **{
        "bn.renorm_start": "rstart",
        "bn.renorm_rmax_end": "rmax_end",
        "bn.renorm_dmax_end": "dmax_end",
        "bn.noise_scale": "nscale",
        "bn.noise_std": "nstd",
        "bn.unbiased": "unbiased",
      },
    ),
    description="MNIST MLP (sigmoid, lr 0.5): plain BN vs its variants and no BN",
  )


def ics() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.product(
      sw.concat([_bn(), _bn(**NOISE), {"model.use_bn": False}]), sw.axis("seed", SEEDS)
    ),
    fixed={"num_steps": STEPS, "ics_probe": True, "max_loss": 1e3},
    aliases=dict(ALIASES, **{"bn.noise_scale": "nscale", "bn.noise_std": "nstd"}),
    description="Internal covariate shift (Santurkar et al. 2018, Def. 2.1): BN, noisy BN, no BN",
  )


def weight_scale() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.product(
      sw.axis("model.use_bn", (True, False)),
      sw.axis("model.init_std", (0.1, 1.0, 10.0)),
      sw.axis("seed", SEEDS),
    ),
    fixed={"num_steps": STEPS, "max_loss": 1e3, "model.init_fan_in": True},
    aliases=ALIASES,
    description="Initial weights scaled by a (N(0, a^2/fan_in)), BN on/off (Sec. 3.3)",
  )


def regularization() -> sw.Sweep:
  return sw.Sweep(
    base=BASE,
    grid=sw.product(
      sw.axis("model.use_bn", (True, False)),
      sw.axis("model.dropout_rate", (0.0, 0.3)),
      sw.axis("seed", SEEDS),
    ),
    fixed={
      "num_steps": 3 * STEPS,
      "eval_train_examples": 8_000,
      "eval_every": 500,
      "max_loss": 1e3,
    },
    aliases=ALIASES,
    description="Dropout on/off x BN on/off: final accuracy and train-test gap (Sec. 3.4)",
  )


SWEEPS = {
  "variants": variants,
  "ics": ics,
  "weight_scale": weight_scale,
  "regularization": regularization,
}


def get_sweep(arg: str) -> sw.Sweep:
  """`arg` is '<one of SWEEPS>[,<preset>]'."""
  choice = common.parse(arg, "ablation_sweeps.py", {"sweep": tuple(SWEEPS)}, required=["sweep"])
  return common.sweep_with_preset(SWEEPS[choice["sweep"]](), choice[common.PRESET])
