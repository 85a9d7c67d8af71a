"""Training speed of the MNIST MLP, ours next to baselines, measured in one process.

  python scripts/benchmark.py [--idx_dir=DIR] [--steps=500] [--repeats=9]
    [--figure1] [--profile] [--noinception] [--json]

For BN on and off it times, on one device and interleaved round by round (so
that machine noise hits all alike), these loops of `--steps` SGD steps (batch 60):
  floor     the step's matrix multiplications alone (forward, weight and input
            gradients, the update) in one lax.scan: no nonlinearity, no BN, no loss;
  ours      bn_repro's compiled training chunk (data on device, lax.scan, pmap);
  per-step  a plain loop: jax.jit of one step with flax.linen.BatchNorm, one
            Python dispatch and one host-to-device batch per step;
  torch     if PyTorch is importable (never a dependency): the same MLP in a
            PyTorch eager loop (scripts/torch_reference.py).
Each loop's speed is its fastest round (timeit's rule: the round least disturbed
by other load; every round is in --json), and each ratio the median over rounds of
the two loops' speeds in the same round. It prints steps/s, each loop's ratio
to the floor, our speed-up over the per-step and PyTorch loops, compile time, each
compiled program's peak memory (XLA's memory analysis: arguments, results and
temporaries, per device) and the process's peak RSS; 8 seeds of the BN MLP trained
together in one program (bn_repro.training.BatchedTrainer, vmap over runs, spread over one CPU
device per core as the sweep runner's --batched does, and on one device) against
the same runs one after another, in run-steps/s; the small BN-Inception's images/s
(forward + backward) and compile time, with the convolutions config.model.conv_impl="auto"
picks (im2col on CPU) and with XLA's own, and PyTorch eager's on the same network.
--figure1 (needs --idx_dir) also times the whole Figure 1 reproduction, `scripts/figure1.sh`
in a subprocess as a user runs it. --profile adds where the time of one step goes: the XLA
operations of the floor's and our steps, in microseconds per step, from a jax.profiler trace.
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
  "figure1", False, "Also time the whole Figure 1 reproduction (2 x 50,000 steps)."
)
_PROFILE = flags.DEFINE_bool(
  "profile", False, "Also print the XLA operations of one step and their time."
)
_INCEPTION = flags.DEFINE_bool("inception", True, "Also time the small BN-Inception.")


def main(argv):
  del argv
  if _FIGURE1.value and not _IDX_DIR.value:
    print("benchmark: --figure1 needs --idx_dir (the MNIST IDX files)", file=sys.stderr)
    sys.exit(2)
  if _PROFILE.value:  # read when the CPU backend starts, i.e. before jax's first use
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
  from bn_repro import parallel
  from bn_repro.benchmark import measure

  parallel.add_cpu_devices()  # for the batched runs, as the sweep runner's --batched does
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figure1.sh")
  res = measure.measure(
    _IDX_DIR.value,
    _STEPS.value,
    _REPEATS.value,
    script if _FIGURE1.value else "",
    _PROFILE.value,
    _INCEPTION.value,
  )
  if _JSON.value:
    print(json.dumps(res, indent=2))
  else:
    measure.print_table(res)


if __name__ == "__main__":
  app.run(main)
