"""Parameter counts of BN-Inception, the Inception baseline and the small CPU variants.

Counts the `params` collection (kernels, biases, BN scale/bias; not the BN population
statistics) with `jax.eval_shape` on `model.init`, so nothing is allocated. The paper
quotes 13.6M parameters for the Inception baseline (Sec. 4.2); its appendix table
implies about 11.2M for BN-Inception. Neither figure says whether auxiliary
classifiers are included; these models have none.

  python scripts/param_counts.py [--num_classes=1000]
"""

import argparse
from typing import Any

from bn_repro.models import inception

SMALL: dict[str, Any] = dict(width_multiplier=0.125, modules=("3a", "3b", "3c", "4a"), stem="small")


def rows(num_classes: int) -> list[tuple[Any, ...]]:
  """(label, model, input shape, paper's figure) for every model in the table."""
  full = (1, 224, 224, 3)
  out = []
  for proj in (128, 96):
    out.append(
      (
        f"BN-Inception, pool_proj_4cd={proj}",
        inception.bn_inception(num_classes=num_classes, pool_proj_4cd=proj),
        full,
        "~11.2M (table)" if proj == 128 else "",
      )
    )
  out.append(
    (
      "BN-Inception, plain 7x7 stem, pool_proj_4cd=128",
      inception.bn_inception(num_classes=num_classes, separable_stem=False),
      full,
      "",
    )
  )
  for proj in (128, 96):
    out.append(
      (
        f"Inception baseline, pool_proj_4cd={proj}",
        inception.inception_baseline(num_classes=num_classes, pool_proj_4cd=proj),
        full,
        "13.6M" if proj == 128 else "",
      )
    )
  out.append(
    (
      "BN-Inception small: w=1/8, 3a-4a, small stem, 28x28x1, 10 cl.",
      inception.bn_inception(num_classes=10, **SMALL),
      (1, 28, 28, 1),
      "",
    )
  )
  out.append(
    (
      "BN-Inception small: w=1/4, all modules, small stem, 32x32x3, 10 cl.",
      inception.bn_inception(num_classes=10, width_multiplier=0.25, stem="small"),
      (1, 32, 32, 3),
      "",
    )
  )
  out.append(
    (
      "BN-Inception: w=1, all modules, small stem, 32x32x3, 10 cl.",
      inception.bn_inception(num_classes=10, stem="small"),
      (1, 32, 32, 3),
      "",
    )
  )
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--num_classes",
    type=int,
    default=1000,
    help="classes of the full-size models (the small ones have 10)",
  )
  args = parser.parse_args()
  table = [
    (label, inception.count_params(model, shape), paper)
    for label, model, shape, paper in rows(args.num_classes)
  ]
  width = max(len(label) for label, _, _ in table)
  print(f"{'model':<{width}}  {'params':>12}  {'(M)':>7}  paper")
  for label, n, paper in table:
    print(f"{label:<{width}}  {n:>12,}  {n / 1e6:>7.3f}  {paper}")


if __name__ == "__main__":
  main()
