"""Every number the reports quote from Ioffe & Szegedy (2015), once, with where it comes from.

The claims in REPORT.md's "paper vs. ours" table (`CLAIMS`, `WHERE`) are built from these
numbers; anything else quoted (`MNIST_REPRODUCTIONS`) says what it is.
"""

BASELINE = "inception"

# Figure 3 (Sec. 4.2, the single-network table): variant (the config name of
# bn_repro/configs/inception_small.py) -> (the paper's name, its steps to 72.2% top-1 in millions
# (None: never), its max top-1 accuracy).
PAPER_VARIANTS = {
  "inception": ("Inception", 31.0, 0.722),
  "bn_baseline": ("BN-Baseline", 13.3, 0.727),
  "bn_x5": ("BN-x5", 2.1, 0.730),
  "bn_x30": ("BN-x30", 2.7, 0.748),
  "bn_x5_sigmoid": ("BN-x5-Sigmoid", None, 0.698),
}
PAPER_BATCH = 32  # Sec. 4.2: a step is one replica's update of 32 examples
PAPER_TARGET = PAPER_VARIANTS[BASELINE][2]  # Inception's max top-1: Figure 3's target, 0.722
BN_X30_MAX_AT = 6  # Figure 3: BN-x30's max top-1 is after 6M steps
IMAGENET_CHANCE = "1/1000"  # Sec. 4.2: sigmoid Inception without BN "never achieves better"
MNIST_STEPS = "50k"  # Sec. 4.1: 50,000 training steps of the MNIST MLP (Figure 1)
# Not the paper's (it prints no Figure 1 numbers): public reproductions' final test accuracy
# on the full MNIST test set, for orientation; REPORT.md labels them as such.
MNIST_REPRODUCTIONS = (
  "public reproductions, not the paper: about 97.5–98.2% final test accuracy with BN vs "
  "97.1–97.7% without on MNIST's full test set"
)


def name(variant: str) -> str:
  """The paper's name of a variant: "bn_x5" -> "BN-x5"."""
  return PAPER_VARIANTS[variant][0]


def steps_millions(variant: str) -> float | None:
  """The variant's steps to 72.2% top-1 in millions (Figure 3); None: never."""
  return PAPER_VARIANTS[variant][1]


def steps_between(steps: float, from_batch: int, to_batch: int) -> float:
  """`steps` of `from_batch` examples as steps of `to_batch` (the same examples seen): ours
  in the paper's unit with to_batch=PAPER_BATCH, the paper's in ours with from_batch=it."""
  return steps * from_batch / to_batch


def max_accuracy(variant: str) -> float:
  """The variant's max top-1 accuracy (Figure 3)."""
  return PAPER_VARIANTS[variant][2]


def speedup(variant: str) -> float | None:
  """Inception's steps to 72.2% / the variant's, from Figure 3."""
  steps = steps_millions(variant)
  base = steps_millions(BASELINE)
  assert base is not None  # Inception reaches its own max
  return base / steps if steps else None


def percent(accuracy: float) -> str:
  """0.722 -> "72.2%"."""
  return f"{100 * accuracy:.1f}%"


def _fewer(variant: str) -> str:
  steps, base = steps_millions(variant), steps_millions(BASELINE)
  assert steps is not None and base is not None  # only variants that reach the target
  return f"{name(variant)} {steps:.1f}M ({steps / base:.3f}; {speedup(variant):.2f}× fewer)"


_TARGET = percent(PAPER_TARGET)
_SIGMOID = percent(max_accuracy("bn_x5_sigmoid"))

# The paper's claim for each row of REPORT.md's "paper vs. ours" table, and where the paper
# makes it. Only the paper's own statements and numbers.
CLAIMS = {
  "fig1a": "Test accuracy with BN is higher throughout training (no numbers printed).",
  "fig1bc": "Without BN the 15th/50th/85th percentiles of a last-layer "
  "sigmoid input drift a lot over training; with BN they are far more stable.",
  "higher_lr": "BN allows much higher learning rates without divergence "
  "(BN-x5 / BN-x30 train at 5x / 30x Inception's rate, which diverges without BN).",
  "sigmoid": "BN makes saturating nonlinearities trainable (BN-x5-Sigmoid reaches "
  f"{_SIGMOID} top-1; Inception with sigmoid and no BN stays at chance).",
  "fig2": f"Figure 2: BN-x5 and BN-x30 pass Inception's best ({_TARGET}) long before Inception "
  f"gets there; BN-x30 ends highest ({percent(max_accuracy('bn_x30'))}).",
  "fig3_fewer": f"BN variants reach Inception's best ({_TARGET}) in a fraction of its "
  f"{steps_millions(BASELINE):.1f}M steps: "
  + "; ".join(_fewer(v) for v in ("bn_baseline", "bn_x5", "bn_x30"))
  + "; BN-x5-Sigmoid never.",
  "fig3_sigmoid": f"BN-x5-Sigmoid learns: {_SIGMOID} max top-1, though it never reaches "
  f"{_TARGET}; Inception with sigmoid and no BN never beats chance ({IMAGENET_CHANCE}).",
  "fig3_trains": "The five variants all train (Figure 2).",
  "fig3_diverged": 'Inception without BN at BN-x5\'s learning rate diverges ("machine infinity").',
}
WHERE = {
  "fig1a": "Figure 1(a), Sec. 4.1",
  "fig1bc": "Figure 1(b, c), Sec. 4.1",
  "higher_lr": "Sec. 3.3, 4.2.1",
  "sigmoid": "Sec. 4.2.1",
  "fig2": "Figure 2",
  "fig3_fewer": "Figure 3",
  "fig3_sigmoid": "Figure 3, Sec. 4.2.1",
  "fig3_trains": "Figure 2",
  "fig3_diverged": "Sec. 4.2.1",
}


def claim(key: str) -> str:
  """The paper's claim `key` with where the paper makes it."""
  return f"{CLAIMS[key]} ({WHERE[key]})"
