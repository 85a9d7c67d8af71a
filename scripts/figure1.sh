#!/usr/bin/env bash
# Figure 1 end to end: train the MNIST MLP with and without BN (sigmoid), then draw the figure.
#   [FIGURE1_PRESET=PRESET] scripts/figure1.sh OUT_DIR [--config.field=value ...]
# Extra flags go to both runs; FIGURE1_PRESET is a data preset of bn_repro/configs/common.py
# for both, e.g. t10k for the IDX files of the MNIST test set (8,000 train, 2,000 eval) in
# the directory DIR:
#   BN_REPRO_MNIST_DIR=DIR FIGURE1_PRESET=t10k scripts/figure1.sh runs/fig1
# The two runs train at the same time, each on one XLA CPU thread (as bn-repro-sweep
# --parallel=2 runs them); set FIGURE1_SEQUENTIAL=1 to run one after the other. Where taskset
# exists, each run is pinned to one CPU in both modes: XLA:CPU splits some operations by the
# number of CPUs a process may use, which changes float rounding, so one CPU per run gives the
# same numbers in both modes and on any machine with the same instruction set (and, this MLP
# being small, is also the fastest: neither process's threads preempt the other's).
set -euo pipefail
out=${1:?usage: scripts/figure1.sh OUT_DIR [--config.field=value ...]}
shift
run() {
  local variant=$1 cpus=$2
  shift 2
  local pin=()
  [[ -n $cpus ]] && pin=(taskset -c "$cpus")
  "${pin[@]}" python -m bn_repro.main \
    --config="mnist_mlp:${variant}_sigmoid${FIGURE1_PRESET:+,$FIGURE1_PRESET}" \
    --workdir="$out/$variant" "$@"
}
# Two CPUs this script may use (the first twice if it has one); none without taskset.
cpus=()
if command -v taskset > /dev/null; then
  read -r -a cpus < <(python -c 'import os
c = sorted(os.sched_getaffinity(0)); print(c[0], c[1 % len(c)])')
fi
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"
if [[ "${FIGURE1_SEQUENTIAL:-0}" == 1 ]]; then
  run bn "${cpus[0]:-}" "${@}"
  run nobn "${cpus[0]:-}" "${@}"
else
  run bn "${cpus[0]:-}" "${@}" & bn=$!
  run nobn "${cpus[1]:-}" "${@}" & nobn=$!
  status=0
  wait "$bn" || status=$?
  wait "$nobn" || status=$?
  [[ $status == 0 ]] || exit "$status"
fi
python scripts/figure1.py --bn="$out/bn" --nobn="$out/nobn" --out="$out"
