#!/usr/bin/env bash
# Figure 1 end to end: train the MNIST MLP with and without BN (sigmoid), then draw the figure.
#   scripts/figure1.sh OUT_DIR [--config.field=value ...]
# Extra flags go to both runs, e.g. the offline IDX files:
#   scripts/figure1.sh runs/fig1 --config.data.source=idx --config.data.idx_dir=../shared/data/mnist-t10k \
#     --config.data.train_split='test[:8000]' --config.data.eval_split='test[8000:]'
# The two runs train at the same time, each on one XLA CPU thread (as bn-repro-sweep
# --parallel=2 runs them) and, where taskset exists, each pinned to its half of the CPUs this
# script may use (so that neither process's threads preempt the other's); set
# FIGURE1_SEQUENTIAL=1 to run one after the other.
set -euo pipefail
out=${1:?usage: scripts/figure1.sh OUT_DIR [--config.field=value ...]}
shift
run() {
  local variant=$1 cpus=$2
  shift 2
  local pin=()
  [[ -n $cpus ]] && pin=(taskset -c "$cpus")
  "${pin[@]}" python -m bn_repro.main --config="configs/mnist_mlp.py:${variant}_sigmoid" \
    --workdir="$out/$variant" "$@"
}
# The two halves of this process's CPU affinity, as taskset lists ("0,1" "2,3"); none
# without taskset or with one CPU.
halves=()
if command -v taskset > /dev/null; then
  read -r -a halves < <(python -c 'import os
c = sorted(os.sched_getaffinity(0)); h = len(c) // 2
print(",".join(map(str, c[:h])), ",".join(map(str, c[h:])) if h else "")')
fi
if [[ "${FIGURE1_SEQUENTIAL:-0}" == 1 ]]; then
  run bn "" "${@}"
  run nobn "" "${@}"
else
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"
  run bn "${halves[0]:-}" "${@}" & bn=$!
  run nobn "${halves[1]:-}" "${@}" & nobn=$!
  status=0
  wait "$bn" || status=$?
  wait "$nobn" || status=$?
  [[ $status == 0 ]] || exit "$status"
fi
python scripts/figure1.py --bn="$out/bn" --nobn="$out/nobn" --out="$out"
