"""BN-Inception and the MNIST MLP's loop on whatever devices are present.

  python scripts/accelerator_benchmark.py [--dtypes=float32,bfloat16] [--steps=20]
    [--per_device_batch=32] [--image_size=224] [--mnist_steps=1000] [--json=FILE] [--tiny]

Prints a Markdown table: BN-Inception's training step data-parallel over every local device
(images/s, median step time, compile time, model FLOPs per device step, the peak used, MFU)
per dtype, and the MNIST MLP's steps/s on one device. Needs jax, flax, optax, numpy and absl
only (bn_repro.benchmark.accelerator). --tiny: a stem-only Inception on 32x32 images, a few
steps (the tests' CPU version). Exit code 2: bad flags.
"""

import json
import sys

from absl import app, flags

_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of BN-Inception.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed BN-Inception steps per dtype (after a warm-up).")
_BATCH = flags.DEFINE_integer("per_device_batch", 32, "Images per device and step.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Image height and width.")
_MNIST_STEPS = flags.DEFINE_integer("mnist_steps", 1000, "MNIST MLP steps per timed call.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows as JSON to this file.")
_TINY = flags.DEFINE_bool("tiny", False, "A tiny version (CPU, seconds).")


def main(argv):
  del argv
  from bn_repro.benchmark import accelerator

  overrides, size, batch, steps, mnist_steps = (
    None,
    _SIZE.value,
    _BATCH.value,
    _STEPS.value,
    _MNIST_STEPS.value,
  )
  if _TINY.value:
    overrides = dict(
      modules=(), width_multiplier=0.125, num_classes=10, stem="small", stem_stride=2
    )
    overrides.update(separable_stem=False)
    size, batch, steps, mnist_steps = 32, 4, 2, 20
  unknown = [d for d in _DTYPES.value if d not in accelerator.DTYPES]
  if unknown:
    print(
      f"--dtypes: unknown {', '.join(unknown)}; use {', '.join(accelerator.DTYPES)}",
      file=sys.stderr,
    )
    sys.exit(2)
  rows = [
    accelerator.inception(d, batch, size, steps, model_overrides=overrides) for d in _DTYPES.value
  ]
  rows.append(accelerator.mnist_loop(steps=mnist_steps, rounds=3 if _TINY.value else 5))
  print("\n".join(accelerator.table(rows)))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
