#!/usr/bin/env bash
# Figure 1 end to end: train the MNIST MLP with and without BN (sigmoid), then draw the figure.
#   scripts/figure1.sh OUT_DIR [--config.field=value ...]
# Extra flags go to both runs, e.g. the offline IDX files:
#   scripts/figure1.sh runs/fig1 --config.data.source=idx --config.data.idx_dir=../shared/data/mnist-t10k \
#     --config.data.train_split='test[:8000]' --config.data.eval_split='test[8000:]'
set -euo pipefail
out=${1:?usage: scripts/figure1.sh OUT_DIR [--config.field=value ...]}
shift
python -m bn_repro.main --config=configs/mnist_mlp.py:bn_sigmoid --workdir="$out/bn" "$@"
python -m bn_repro.main --config=configs/mnist_mlp.py:nobn_sigmoid --workdir="$out/nobn" "$@"
python scripts/figure1.py --bn="$out/bn" --nobn="$out/nobn" --out="$out"
