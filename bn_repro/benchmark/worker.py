"""One placement's side of the benchmark: a process pinned to some CPU cores that builds the
timed loops (bn_repro.benchmark.loops) and times one round of a loop when asked.

XLA:CPU sizes its thread pool from the cores a process may use when the backend starts, so a
placement is a process, not a setting a running process can switch. bn_repro.benchmark.measure
starts one worker per placement and asks them in turn, round by round, so that both placements
are measured in one run under the same machine noise.

Protocol (JSON lines): the parent writes the loops' spec on stdin; the worker answers
{"ready": {loop: facts}} on stdout, then one {"rate": steps/s} for each loop name it reads,
and exits at end of input.
"""

import json
import sys


def _facts(loop) -> dict:
  from bn_repro.benchmark import measure

  out = {"steps": loop.steps, "compile_seconds": getattr(loop, "compile_seconds", None)}
  if hasattr(loop, "compiled"):
    out["peak_mb"] = measure.peak_memory_mb(loop.compiled)
  for k in ("batch", "shards", "flops", "num_params"):
    if hasattr(loop, k):
      out[k] = getattr(loop, k)
  return out


def main() -> None:
  spec = json.loads(sys.stdin.readline())
  from bn_repro import parallel

  parallel.add_cpu_devices()  # one CPU device per core for the batched runs to spread over
  from bn_repro.benchmark import loops, measure

  train_ds, eval_ds = loops.datasets(spec["idx_dir"])
  timed = measure.build_loops(train_ds, eval_ds, spec["steps"], spec["inception"], spec["widths"])
  for r in timed.values():  # the warm-up round
    r.run()
  print(json.dumps({"ready": {k: _facts(r) for k, r in timed.items()}}), flush=True)
  for line in sys.stdin:
    print(json.dumps({"rate": measure.time_one(timed[line.strip()])}), flush=True)


if __name__ == "__main__":
  main()
