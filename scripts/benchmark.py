"""Training speed of the MNIST MLP, ours next to baselines, at each CPU placement, in one run.

  python scripts/benchmark.py [--idx_dir=DIR] [--steps=500] [--repeats=9]
    [--widths=200,400,800] [--figure1] [--profile] [--noinception] [--json]

It times these loops of `--steps` SGD steps (batch 60), each in two worker processes, one
pinned to one core and one on all cores (XLA:CPU's thread pool is as wide as the process's
cores, bn_repro.placement), asking them in turn round by round so that machine noise hits all
alike:
  floor        the step's matrix multiplications alone (forward, weight and input gradients,
               the update) in one lax.scan: no nonlinearity, no BN, no loss;
  ours         bn_repro's compiled training chunk (data on device, lax.scan), BN and no BN;
  flax_scan    the plain Flax loop at its best: a training step with flax.linen.BatchNorm in
               one lax.scan over batches in device memory;
  per_step     the usual Flax loop: jax.jit of one step, one dispatch and one host-to-device
               batch per step;
  torch        if PyTorch is importable (never a dependency): the same MLP, PyTorch eager;
  batched      8 seeds of the BN MLP in one program (bn_repro.training.BatchedTrainer), in
               run-steps/s against the same runs one after another;
  inception    the small BN-Inception's images/s (forward + backward) with the convolutions
               config.model.conv_impl="auto" picks and with XLA's own.
Each loop's speed is its fastest round at its best placement (timeit's rule: the round least
disturbed by other load; every round is in --json), and each ratio the median over rounds of
the two loops' speeds in the same round, each at its best placement. --widths adds ours with
BN at those hidden widths, at both placements: the crossover bn_repro.placement uses.
--figure1 (needs --idx_dir) also times `scripts/figure1.sh` (one seed a net) as a user runs it,
with the compilation cache empty and then warm, and the same training and evaluations as plain
Flax programs side by side (bn_repro.benchmark.peer).
--profile adds where one step's time goes (XLA operations, from a jax.profiler trace).
Without --idx_dir it uses random images (speed does not depend on pixel values).
"""

import json
import os
import sys

from absl import app, flags

_IDX_DIR = flags.DEFINE_string("idx_dir", "", "IDX directory with t10k files; '' = random images.")
_STEPS = flags.DEFINE_integer("steps", 500, "Steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Interleaved rounds.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_FIGURE1 = flags.DEFINE_bool(
  "figure1", False, "Also time Figure 1 end to end (2 x 50,000 steps) and its plain Flax peer."
)
_PROFILE = flags.DEFINE_bool(
  "profile", False, "Also print the XLA operations of one step and their time."
)
_INCEPTION = flags.DEFINE_bool("inception", True, "Also time the small BN-Inception.")
_WIDTHS = flags.DEFINE_list(
  "widths", [], "Also time ours with BN at these hidden widths (the placement crossover)."
)


def main(argv):
  del argv
  if _FIGURE1.value and not _IDX_DIR.value:
    print("benchmark: --figure1 needs --idx_dir (the MNIST IDX files)", file=sys.stderr)
    sys.exit(2)
  if _PROFILE.value:  # read when the CPU backend starts, i.e. before jax's first use
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
  from bn_repro.benchmark import measure

  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figure1.sh")
  res = measure.measure(
    _IDX_DIR.value,
    _STEPS.value,
    _REPEATS.value,
    script if _FIGURE1.value else "",
    _PROFILE.value,
    _INCEPTION.value,
    [int(w) for w in _WIDTHS.value],
  )
  if _JSON.value:
    print(json.dumps(res, indent=2))
  else:
    measure.print_table(res)


if __name__ == "__main__":
  app.run(main)
