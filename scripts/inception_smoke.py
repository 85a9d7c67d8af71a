"""One training step of each full-size ImageNet variant at 224x224 on random images (any device).

  python scripts/inception_smoke.py [--batch=2] [--dtype=float32] [--variants=inception,bn_x30]

For each of bn_repro/configs/inception_imagenet.py's five variants it builds the full model (1000
classes), runs one SGD step of bn_repro's training loop on random uint8 images and one
evaluation, and prints the logits shape, the parameter count, the training loss (finite?),
the compile time and the time of the step. No dataset needed: it checks that every variant
builds, trains and evaluates at paper size, not what it learns.
"""

import time

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 2, "Global batch (a multiple of the device count).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
_VARIANTS = flags.DEFINE_list("variants", [], "Subset of the five variants (default: all).")


def main(argv):
  del argv
  import jax
  import numpy as np

  from bn_repro import data, parallel, training
  from bn_repro.configs import inception_imagenet

  rng = np.random.default_rng(0)
  n = 2 * _BATCH.value
  ds = data.ArrayDataset(
    rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8),
    rng.integers(0, 1000, n).astype(np.int32),
  )
  devs = parallel.devices(0)
  print(
    f"{'variant':<15}{'logits':>12}{'params':>12}{'loss':>9}{'finite':>8}"
    f"{'compile s':>11}{'step s':>8}  ({len(devs)} x {devs[0].device_kind}, {_DTYPE.value})"
  )
  for variant in _VARIANTS.value or inception_imagenet.VARIANTS:
    c = inception_imagenet.get_config(variant)
    c.batch_size, c.eval_batch_size, c.dtype = _BATCH.value, _BATCH.value, _DTYPE.value
    trainer = training.Trainer(c, ds, ds, devs)
    state = trainer.init_state(ds.images[:2])
    logits = jax.eval_shape(
      lambda s=state, model=trainer.model: model.apply(
        {"params": s.params, "batch_stats": s.batch_stats}, ds.images[: _BATCH.value] / 255.0
      )
    )
    params = sum(x.size for x in jax.tree.leaves(state.params))
    state = parallel.replicate(state, devs)
    t = time.perf_counter()
    state, metrics, finite = trainer.train(state, 0, 1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    state, metrics2, _ = trainer.train(state, 1, 1)
    step = time.perf_counter() - t
    evals = trainer.evaluate(state)
    loss = float(metrics[0, 0])
    ok = finite and np.isfinite(loss) and np.isfinite(evals["eval/loss"])
    print(
      f"{variant:<15}{str(logits.shape):>12}{params:>12,}{loss:>9.3f}{str(bool(ok)):>8}"
      f"{trainer.compile_seconds:>11.1f}{step:>8.2f}"
    )
    del first, metrics2


if __name__ == "__main__":
  app.run(main)
