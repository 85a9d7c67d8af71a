"""Measuring the loops (bn_repro.benchmark.loops) interleaved in one process, and the table."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bn_repro import placement
from bn_repro.benchmark import figure1, loops

PROFILE_TOP = 8


def step_profile(runner, steps: int) -> dict:
  """Where one step's time goes: a jax.profiler trace of one run of `runner`.

  Returns microseconds per step of the traced run, the sum over the XLA
  operations that ran once per step, their number, and the PROFILE_TOP slowest
  (name, microseconds per step). Needs --xla_cpu_enable_xprof_traceme on a CPU.
  """
  import collections
  import glob
  import gzip

  import jax

  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    t = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    with gzip.open(glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total: dict[str, float] = collections.defaultdict(float)
  count: collections.Counter[str] = collections.Counter()
  for e in events:
    # XLA:CPU marks each operation twice ("name" and "end: name"); "$..." are Python frames.
    if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "end: ")):
      total[e["name"]] += e.get("dur", 0.0)
      count[e["name"]] += 1
  per_step = {k: v / steps for k, v in total.items() if count[k] == steps}
  top = sorted(per_step.items(), key=lambda kv: -kv[1])[:PROFILE_TOP]
  return {
    "us_per_step": wall / steps * 1e6,
    "ops_us_per_step": sum(per_step.values()),
    "ops_per_step": len(per_step),
    "top": [[k, v] for k, v in top],
  }


def peak_memory_mb(compiled) -> float:
  """XLA's peak memory of a compiled program, per device, in MiB (its arguments, results and
  temporaries at their largest: Compiled.memory_analysis)."""
  m = compiled.memory_analysis()
  peak = getattr(m, "peak_memory_in_bytes", 0) or (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  return peak / 2**20


def time_one(runner) -> float:
  """Steps per second of one round of `runner`."""
  t = time.perf_counter()
  runner.run()
  return runner.steps / (time.perf_counter() - t)


RUNS = 8  # seeds of the batched loops


def build_loops(train_ds, eval_ds, steps: int, with_inception: bool, widths=()) -> dict:
  """Every loop the benchmark times, by name, compiled and ready; `widths`: also ours with BN
  at those hidden widths (ours_bn_h<width>, for the placement crossover)."""
  from bn_repro.benchmark import torch_reference

  timed: dict[str, Any] = {"floor": loops.Floor(train_ds, steps)}
  for bn in ("bn", "nobn"):
    timed[f"ours_{bn}"] = loops.Ours(f"{bn}_sigmoid", train_ds, eval_ds, steps)
    timed[f"flax_scan_{bn}"] = loops.FlaxScan(bn == "bn", train_ds, steps)
  timed["per_step_bn"] = loops.PerStep(True, train_ds, steps)
  base = placement.step_flops(loops.config("bn_sigmoid", "")) or 1.0
  for w in widths:  # about as long a round as ours_bn's
    wide = placement.step_flops(loops.config("bn_sigmoid", "", w)) or 1.0
    scaled = max(1, round(steps * base / wide))
    timed[f"ours_bn_h{w}"] = loops.Ours("bn_sigmoid", train_ds, eval_ds, scaled, hidden=w)
  torch = torch_reference.available()
  if torch:
    timed["torch_bn"] = torch_reference.MlpLoop(True, train_ds.images, train_ds.labels, steps)
  # As many run-steps per round as ours_bn takes, so both loops last about as long.
  timed["batched_8_runs"] = loops.Batched(train_ds, eval_ds, max(1, steps // RUNS), RUNS)
  if with_inception:
    inception_steps = max(1, steps // 50)
    timed["small_bn_inception"] = loops.SmallInception(train_ds, eval_ds, inception_steps)
    timed["small_bn_inception_xla_conv"] = loops.SmallInception(
      train_ds, eval_ds, inception_steps, conv_impl="xla"
    )
    if torch:
      timed["torch_small_bn_inception"] = torch_reference.InceptionLoop(
        train_ds.images, train_ds.labels, inception_steps
      )
  return timed


def placements() -> dict[str, list[int]]:
  """The placements every loop is timed at: one core, and all cores this process may use."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if len(cores) <= 1:
    return {"all_cores": cores}
  return {"one_core": cores[:1], "all_cores": cores}


class _Worker:
  """A bn_repro.benchmark.worker process pinned to `cores` (all of them when empty)."""

  def __init__(self, cores: list[int], spec: dict):
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "bn_repro.benchmark.worker"],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      preexec_fn=pin,
    )
    self.facts = self._ask(json.dumps(spec))["ready"]

  def _ask(self, line: str) -> dict:
    assert self.proc.stdin and self.proc.stdout
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()
    answer = self.proc.stdout.readline()
    if not answer:
      raise SystemExit(f"benchmark: a worker exited {self.proc.wait()} (its stderr is above)")
    return json.loads(answer)

  def rate(self, loop: str) -> float:
    return self._ask(loop)["rate"]

  def close(self) -> None:
    assert self.proc.stdin
    self.proc.stdin.close()
    self.proc.wait()


def rounds(workers: dict, names, repeats: int) -> dict[str, dict[str, list[float]]]:
  """Steps per second of every loop at every placement in each of `repeats` interleaved
  rounds (after the workers' warm-up round), so that machine noise hits all alike."""
  rates: dict[str, dict[str, list[float]]] = {p: {k: [] for k in names} for p in workers}
  for _ in range(repeats):
    for k in names:
      for p, w in workers.items():
        rates[p][k].append(w.rate(k))
  return rates


def paired_ratio(rates: dict[str, list[float]], a: str, b: str, factor: float = 1.0) -> float:
  """Median over rounds of a's speed / b's speed in the same round (paired, so that
  slow spells of the machine cancel)."""
  return statistics.median(x * factor / y for x, y in zip(rates[a], rates[b]))


def best_placement(rates: dict) -> tuple[dict[str, str], dict[str, list[float]]]:
  """Each loop's best placement (its fastest round's) and its rounds there."""
  names = next(iter(rates.values()))
  best = {k: max(rates, key=lambda p: max(rates[p][k])) for k in names}
  return best, {k: rates[best[k]][k] for k in names}


def crossover(rates: dict, facts: dict, widths) -> list[dict]:
  """Ours with BN at each hidden width: MFLOP a step, steps/s at each placement, and one
  core's speed over all cores' (paired)."""
  out = []
  for w in (100, *widths):
    k = "ours_bn" if w == 100 else f"ours_bn_h{w}"
    row = {"hidden": w, "mflop_per_step": facts[k]["flops"] / 1e6}
    row.update({p: max(r[k]) for p, r in rates.items()})
    if "one_core" in rates:
      row["one_core_over_all"] = statistics.median(
        a / b for a, b in zip(rates["one_core"][k], rates["all_cores"][k])
      )
    out.append(row)
  return out


def measure(
  idx_dir: str,
  steps: int,
  repeats: int,
  figure1_script: str = "",
  with_profile: bool = False,
  with_inception: bool = True,
  widths=(),
) -> dict:
  """Every loop's speed at each placement and at its best, the ratios between them (each loop
  at its best placement), compile times and memory (one dict); with `figure1_script`
  (scripts/figure1.sh) also Figure 1's wall times, split and plain Flax peer
  (bn_repro.benchmark.figure1); with `widths` the placement crossover."""
  spec = {"idx_dir": idx_dir, "steps": steps, "inception": with_inception, "widths": list(widths)}
  where = placements()
  workers = {p: _Worker(cores, spec) for p, cores in where.items()}
  facts = workers["all_cores"].facts
  try:
    rates = rounds(workers, list(facts), repeats)
  finally:
    for w in workers.values():
      w.close()
  best_place, best_rates = best_placement(rates)
  best = {k: max(v) for k, v in best_rates.items()}
  result: dict = {
    "device": "cpu",
    "placements": where,
    "steps": steps,
    "repeats": repeats,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "steps_per_sec_rounds": rates,
    "steps_per_sec_at": {p: {k: max(v) for k, v in r.items()} for p, r in rates.items()},
    "best_placement": best_place,
    "steps_per_sec": best,
    "compile_seconds": {k: f.get("compile_seconds") for k, f in facts.items()},
    "peak_memory_mb": {k: f["peak_mb"] for k, f in facts.items() if "peak_mb" in f},
  }
  result["ratio_to_floor"] = {k: paired_ratio(best_rates, k, "floor") for k in best}
  result["speedup_over_flax_scan"] = {
    bn: paired_ratio(best_rates, f"ours_{bn}", f"flax_scan_{bn}") for bn in ("bn", "nobn")
  }
  result["speedup_over_per_step"] = paired_ratio(best_rates, "ours_bn", "per_step_bn")
  if "torch_bn" in best:
    result["speedup_over_torch"] = paired_ratio(best_rates, "ours_bn", "torch_bn")
  result["batched"] = {
    "runs": RUNS,
    "devices": facts["batched_8_runs"]["shards"],
    "run_steps_per_sec": best["batched_8_runs"] * RUNS,
    "sequential_run_steps_per_sec": best["ours_bn"],
    "speedup": paired_ratio(best_rates, "batched_8_runs", "ours_bn", RUNS),
  }
  if with_inception:
    result["small_bn_inception"] = _inception(best_rates, best, facts)
  if widths:
    result["crossover"] = crossover(rates, facts, widths)
  if with_profile:
    result["profile"] = _profiles(idx_dir, steps)
  if figure1_script:
    cold, warm = figure1.wall_seconds(idx_dir, figure1_script)
    peer = figure1.peer_seconds(idx_dir)
    result["figure1"] = {
      "wall_seconds": cold["wall_seconds"],
      "warm_wall_seconds": warm["wall_seconds"],
      "split": cold["split"],
      "warm_split": warm["split"],
      "flax_peer_seconds": peer,
      "floor_seconds": 50_000 / best["floor"],
    }
  return result


def _inception(best_rates: dict, best: dict, facts: dict) -> dict:
  """The small BN-Inception's images per second (and PyTorch's on the same network)."""
  from bn_repro.benchmark import torch_reference
  from bn_repro.models import conv

  f = facts["small_bn_inception"]
  out = {
    "images_per_sec": best["small_bn_inception"] * f["batch"],
    "batch": f["batch"],
    "compile_seconds": f["compile_seconds"],
    "conv_impl": conv.resolve("auto"),
    "xla_conv_images_per_sec": best["small_bn_inception_xla_conv"] * f["batch"],
    "vs_xla_conv": paired_ratio(best_rates, "small_bn_inception", "small_bn_inception_xla_conv"),
  }
  if "torch_small_bn_inception" in best:
    t = facts["torch_small_bn_inception"]
    out.update(
      torch_images_per_sec=best["torch_small_bn_inception"] * t["batch"],
      params=t["num_params"],
      torch_version=torch_reference.version(),
      vs_torch=paired_ratio(best_rates, "small_bn_inception", "torch_small_bn_inception"),
    )
  return out


def _profiles(idx_dir: str, steps: int) -> dict:
  """step_profile of the floor and of ours, in this process (on all its cores)."""
  train_ds, eval_ds = loops.datasets(idx_dir)
  runners: dict[str, Any] = {"floor": loops.Floor(train_ds, steps)}
  for bn in ("bn", "nobn"):
    runners[f"ours_{bn}"] = loops.Ours(f"{bn}_sigmoid", train_ds, eval_ds, steps)
  return {k: step_profile(r, steps) for k, r in runners.items()}


def print_table(res: dict) -> None:
  """measure()'s result as the table the docstring describes."""
  places = list(res["placements"])
  print(
    f"MNIST MLP 784-100-100-100-10, batch 60, sigmoid, {res['steps']} steps per loop, "
    f"{res['repeats']} interleaved rounds (steps/s: the fastest round; ratios: median of "
    f"same-round ratios, each loop at its best placement), placements "
    + ", ".join(f"{p}={c}" for p, c in res["placements"].items())
    + f", XLA_FLAGS={res['xla_flags']!r}"
  )
  head = "".join(f"{p:>12}" for p in places)
  print(f"{'loop':<30}{head}{'best':>12}{'vs floor':>10}{'compile s':>11}{'peak MiB':>10}")
  for k in res["steps_per_sec"]:
    c, m = res["compile_seconds"].get(k), res["peak_memory_mb"].get(k)
    at = "".join(f"{res['steps_per_sec_at'][p][k]:>12.0f}" for p in places)
    print(
      f"{k:<30}{at}{res['best_placement'][k]:>12}{res['ratio_to_floor'][k]:>10.2f}"
      f"{'-' if c is None else format(c, '.2f'):>11}{'-' if m is None else format(m, '.1f'):>10}"
    )
  for bn, s in res["speedup_over_flax_scan"].items():
    print(f"ours/plain flax lax.scan loop ({bn}): {s:.2f}x")
  print(f"ours/per-step flax loop (bn): {res['speedup_over_per_step']:.2f}x")
  if "speedup_over_torch" in res:
    print(f"ours/PyTorch eager (bn): {res['speedup_over_torch']:.2f}x")
  b = res["batched"]
  print(
    f"{b['runs']} seeds batched in one program over {b['devices']} CPU device(s): "
    f"{b['run_steps_per_sec']:.0f} run-steps/s vs {b['sequential_run_steps_per_sec']:.0f} one "
    f"after another: {b['speedup']:.2f}x"
  )
  si = res.get("small_bn_inception")
  if si:
    line = (
      f"small BN-Inception (bn_x5, 28x28, batch {si['batch']}): "
      f"{si['images_per_sec']:.0f} images/s forward+backward with {si['conv_impl']} "
      f"convolutions (compile {si['compile_seconds']:.1f} s); XLA's convolutions "
      f"{si['xla_conv_images_per_sec']:.0f} images/s (ours {si['vs_xla_conv']:.2f}x)"
    )
    if "torch_images_per_sec" in si:
      line += (
        f"; PyTorch {si['torch_version']} eager {si['torch_images_per_sec']:.0f} images/s "
        f"(ours {si['vs_torch']:.2f}x), {si['params']:,} parameters in both"
      )
    print(line)
  for row in res.get("crossover", []):
    print(
      f"crossover: hidden {row['hidden']:>5} ({row['mflop_per_step']:.0f} MFLOP/step): "
      + ", ".join(f"{p} {row[p]:.0f} steps/s" for p in places)
      + (f", one core / all {row['one_core_over_all']:.2f}x" if "one_core_over_all" in row else "")
    )
  if "figure1" in res:
    f1 = res["figure1"]
    peer = f1["flax_peer_seconds"]
    print(
      f"Figure 1 (scripts/figure1.sh, one seed a net: 2 x 50,000 steps side by side, evals "
      f"every 250, the figure): {f1['wall_seconds']:.1f} s wall with the compilation cache "
      f"empty, {f1['warm_wall_seconds']:.1f} s warm; the same training and evaluations as "
      f"plain Flax programs, one process a net: {peer:.1f} s (figure1.sh "
      f"{f1['wall_seconds'] / peer:.2f}x / {f1['warm_wall_seconds'] / peer:.2f}x of it); "
      f"the floor's matmuls alone for one net's 50,000 steps: {f1['floor_seconds']:.1f} s"
    )
    for cache, key in (("empty", "split"), ("warm", "warm_split")):
      for net, parts in f1[key].items():
        print(
          f"  split, cache {cache}, {net}: "
          + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in parts.items())
        )
  for k, p in res.get("profile", {}).items():
    print(
      f"profile {k} (traced, so slower): {p['us_per_step']:.0f} us/step, "
      f"{p['ops_per_step']} XLA operations per step taking {p['ops_us_per_step']:.0f} us "
      f"between them; slowest:"
    )
    for name, us in p["top"]:
      print(f"    {us:7.1f} us  {name}")
