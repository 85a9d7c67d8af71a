#!/usr/bin/env bash
# Figure 1 end to end: train the MNIST MLP with and without BN (sigmoid), then draw the figure.
#   [FIGURE1_PRESET=PRESET] [FIGURE1_SEEDS=N] scripts/figure1.sh OUT_DIR [--config.field=value ...]
# Extra flags go to both runs; FIGURE1_PRESET is a data preset of bn_repro/configs/common.py
# for both, e.g. t10k for the IDX files of the MNIST test set (8,000 train, 2,000 eval) in
# the directory DIR:
#   BN_REPRO_MNIST_DIR=DIR FIGURE1_PRESET=t10k scripts/figure1.sh runs/fig1
# Each net trains FIGURE1_SEEDS seeds (default 3: seeds 0..N-1 in OUT_DIR/bn/seed<k> and
# OUT_DIR/nobn/seed<k>) as one batched program (bn-repro --seeds); FIGURE1_SEEDS=1 trains one
# run each, in OUT_DIR/bn and OUT_DIR/nobn. The two nets train at the same time, each on its
# own CPU core (config.cpu_cores), and every line they print starts with "bn: " or "nobn: ";
# FIGURE1_SEQUENTIAL=1 runs one after the other. Pinning each run to one core also fixes the
# float rounding: XLA:CPU splits some operations by the number of CPUs a process may use, so
# one core per run gives the same numbers in both modes and on any machine with the same
# instruction set.
set -euo pipefail
out=${1:?usage: scripts/figure1.sh OUT_DIR [--config.field=value ...]}
shift
seeds=${FIGURE1_SEEDS:-3}
run() {
  local variant=$1 core=$2
  shift 2
  local place=()
  [[ -n $core ]] && place=("--config.cpu_cores=$core")
  python -m bn_repro.main \
    --config="mnist_mlp:${variant}_sigmoid${FIGURE1_PRESET:+,$FIGURE1_PRESET}" \
    --workdir="$out/$variant" --seeds="$seeds" "${place[@]}" "$@" 2>&1 |
    sed -u "s/^/$variant: /"
}
# Two cores this script may use (the first twice if it has one; none where the OS has no
# CPU affinity): each run gets its own through config.cpu_cores (bn_repro/placement.py).
read -r -a cores < <(python -c 'import os
c = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
print(*(c[:2] if len(c) > 1 else c * 2))')
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"
if [[ "${FIGURE1_SEQUENTIAL:-0}" == 1 ]]; then
  run bn "${cores[0]:-}" "${@}"
  run nobn "${cores[0]:-}" "${@}"
else
  run bn "${cores[0]:-}" "${@}" & bn=$!
  run nobn "${cores[1]:-}" "${@}" & nobn=$!
  status=0
  wait "$bn" || status=$?
  wait "$nobn" || status=$?
  [[ $status == 0 ]] || exit "$status"
fi
python scripts/figure1.py --bn="$out/bn" --nobn="$out/nobn" --out="$out"
