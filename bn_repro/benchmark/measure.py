"""Measuring the loops (bn_repro.benchmark.loops) interleaved in one process, and the table."""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bn_repro.benchmark import loops


def figure1_wall_seconds(idx_dir: str, script: str) -> float:
  """Wall seconds of `script` (scripts/figure1.sh) on the IDX files: both runs (50,000 steps
  each, evals every 250, as the script trains them), and the figure."""
  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    proc = subprocess.run(
      [script, os.path.join(tmp, "fig1")],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(script))),
      capture_output=True,
      text=True,
      env=dict(
        os.environ,
        FIGURE1_PRESET="t10k",
        BN_REPRO_MNIST_DIR=os.path.abspath(idx_dir),
        PATH=os.path.dirname(sys.executable)
        + os.pathsep  # its `python`
        + os.environ.get("PATH", ""),
      ),
    )
    if proc.returncode:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      raise SystemExit(f"benchmark: scripts/figure1.sh exited {proc.returncode}: {last}")
    return time.perf_counter() - t


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


def _time(runner) -> float:
  t = time.perf_counter()
  runner.run()
  return runner.steps / (time.perf_counter() - t)


RUNS = 8  # seeds of the batched loops


def build_loops(train_ds, eval_ds, steps: int, with_inception: bool) -> dict:
  """Every loop the benchmark times, by name, compiled and ready."""
  from bn_repro.benchmark import torch_reference

  timed: dict[str, Any] = {"floor": loops.Floor(train_ds, steps)}
  for bn in ("bn", "nobn"):
    timed[f"ours_{bn}"] = loops.Ours(f"{bn}_sigmoid", train_ds, eval_ds, steps)
    timed[f"per_step_{bn}"] = loops.PerStep(bn == "bn", train_ds, steps)
  torch = torch_reference.available()
  if torch:
    for bn in ("bn", "nobn"):
      timed[f"torch_{bn}"] = torch_reference.MlpLoop(
        bn == "bn", train_ds.images, train_ds.labels, steps
      )
  # As many run-steps per round as ours_bn takes, so both loops last about as long.
  per_run = max(1, steps // RUNS)
  timed["batched_8_runs"] = loops.Batched(train_ds, eval_ds, per_run, RUNS)
  timed["batched_8_runs_1_device"] = loops.Batched(train_ds, eval_ds, per_run, RUNS, spread=False)
  inception_steps = max(1, steps // 50)
  if with_inception:
    timed["small_bn_inception"] = loops.SmallInception(train_ds, eval_ds, inception_steps)
    timed["small_bn_inception_xla_conv"] = loops.SmallInception(
      train_ds, eval_ds, inception_steps, conv_impl="xla"
    )
    if torch:
      timed["torch_small_bn_inception"] = torch_reference.InceptionLoop(
        train_ds.images, train_ds.labels, inception_steps
      )
  return timed


def rounds(timed: dict, repeats: int) -> dict[str, list[float]]:
  """Steps per second of every loop in each of `repeats` interleaved rounds (after a warm-up
  round), so that machine noise hits all loops alike."""
  for r in timed.values():
    r.run()
  rates: dict[str, list[float]] = {k: [] for k in timed}
  for _ in range(repeats):
    for k, r in timed.items():
      rates[k].append(_time(r))
  return rates


def paired_ratio(rates: dict[str, list[float]], a: str, b: str, factor: float = 1.0) -> float:
  """Median over rounds of a's speed / b's speed in the same round (paired, so that
  slow spells of the machine cancel)."""
  return statistics.median(x * factor / y for x, y in zip(rates[a], rates[b]))


def _batched(timed: dict, rates: dict, best: dict) -> dict:
  """Run-steps per second: 8 runs in one program vs the same 8 one after another (ours_bn)."""
  out = {"runs": RUNS, "sequential_run_steps_per_sec": best["ours_bn"]}
  for key, name in (("batched_8_runs", ""), ("batched_8_runs_1_device", "one_device_")):
    out[f"{name}speedup"] = paired_ratio(rates, key, "ours_bn", RUNS)
    out[f"{name}run_steps_per_sec"] = best.pop(key) * RUNS
    done = timed.pop(key)
    out[f"{name}compile_seconds"] = done.compile_seconds
    out[f"{name}devices"] = done.shards
  return out


def _inception(timed: dict, rates: dict, best: dict) -> dict:
  """The small BN-Inception's images per second with both convolutions (and PyTorch's)."""
  from bn_repro.benchmark import torch_reference
  from bn_repro.models import conv

  small = timed.pop("small_bn_inception")
  xla_conv = timed.pop("small_bn_inception_xla_conv")
  out = {
    "images_per_sec": best.pop("small_bn_inception") * small.batch,
    "batch": small.batch,
    "compile_seconds": small.compile_seconds,
    "conv_impl": conv.resolve("auto"),
    "xla_conv_images_per_sec": best.pop("small_bn_inception_xla_conv") * xla_conv.batch,
    "xla_conv_compile_seconds": xla_conv.compile_seconds,
    "vs_xla_conv": paired_ratio(rates, "small_bn_inception", "small_bn_inception_xla_conv"),
  }
  if "torch_small_bn_inception" in timed:
    t_inc = timed.pop("torch_small_bn_inception")
    out.update(
      torch_images_per_sec=best.pop("torch_small_bn_inception") * t_inc.batch,
      params=t_inc.num_params,
      torch_version=torch_reference.version(),
      vs_torch=paired_ratio(rates, "small_bn_inception", "torch_small_bn_inception"),
    )
  return out


def measure(
  idx_dir: str,
  steps: int,
  repeats: int,
  figure1_script: str = "",
  with_profile: bool = False,
  with_inception: bool = True,
) -> dict:
  """Every loop's speed, the ratios between them, compile times and memory (one dict);
  with `figure1_script` (scripts/figure1.sh) also the wall time of Figure 1."""
  import jax

  train_ds, eval_ds = loops.datasets(idx_dir)
  timed = build_loops(train_ds, eval_ds, steps, with_inception)
  rates = rounds(timed, repeats)
  best = {k: max(v) for k, v in rates.items()}
  peak_mb = {k: peak_memory_mb(r.compiled) for k, r in timed.items() if hasattr(r, "compiled")}
  result: dict = {
    "device": str(jax.devices()[0].device_kind),
    "steps": steps,
    "repeats": repeats,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "steps_per_sec_rounds": rates,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_memory_mb": peak_mb,
  }
  batched = _batched(timed, rates, best)
  result["compile_seconds"] = {
    k: getattr(r, "compile_seconds", None)
    for k, r in timed.items()
    if k != "torch_small_bn_inception"
  }
  if with_inception:
    result["small_bn_inception"] = _inception(timed, rates, best)
  result["steps_per_sec"] = best
  result["ratio_to_floor"] = {k: paired_ratio(rates, k, "floor") for k in best}
  result["batched"] = batched
  result["speedup_over_per_step"] = {
    bn: paired_ratio(rates, f"ours_{bn}", f"per_step_{bn}") for bn in ("bn", "nobn")
  }
  if "torch_bn" in timed:
    result["speedup_over_torch"] = {
      bn: paired_ratio(rates, f"ours_{bn}", f"torch_{bn}") for bn in ("bn", "nobn")
    }
  if with_profile:
    result["profile"] = {
      k: step_profile(timed[k], steps) for k in ("floor", "ours_bn", "ours_nobn")
    }
  if figure1_script:
    wall = figure1_wall_seconds(idx_dir, figure1_script)
    result["figure1"] = {"wall_seconds": wall, "floor_seconds": 2 * 50_000 / best["floor"]}
  return result


def print_table(res: dict) -> None:
  """measure()'s result as the table the docstring describes."""
  print(
    f"MNIST MLP 784-100-100-100-10, batch 60, sigmoid, {res['steps']} steps per loop, "
    f"{res['repeats']} interleaved rounds (steps/s: the fastest; ratios: median of "
    f"same-round ratios), one {res['device']} device, "
    f"XLA_FLAGS={res['xla_flags']!r}"
  )
  print(f"{'loop':<16}{'steps/s':>10}{'vs floor':>10}{'compile s':>11}{'peak MiB':>10}")
  for k, v in res["steps_per_sec"].items():
    c, m = res["compile_seconds"].get(k), res["peak_memory_mb"].get(k)
    print(
      f"{k:<16}{v:>10.0f}{res['ratio_to_floor'][k]:>10.2f}"
      f"{'-' if c is None else format(c, '.2f'):>11}{'-' if m is None else format(m, '.1f'):>10}"
    )
  for bn, s in res["speedup_over_per_step"].items():
    print(f"ours/per-step ({bn}): {s:.2f}x")
  for bn, s in res.get("speedup_over_torch", {}).items():
    print(f"ours/PyTorch eager ({bn}): {s:.2f}x")
  b = res["batched"]
  print(
    f"{b['runs']} seeds batched in one program over {b['devices']} CPU device(s): "
    f"{b['run_steps_per_sec']:.0f} run-steps/s vs {b['sequential_run_steps_per_sec']:.0f} one "
    f"after another: {b['speedup']:.2f}x (compile {b['compile_seconds']:.1f} s, peak "
    f"{res['peak_memory_mb']['batched_8_runs']:.1f} MiB a device); on one device: "
    f"{b['one_device_run_steps_per_sec']:.0f} run-steps/s, {b['one_device_speedup']:.2f}x "
    f"(peak {res['peak_memory_mb']['batched_8_runs_1_device']:.1f} MiB)"
  )
  si = res.get("small_bn_inception")
  if si:
    line = (
      f"small BN-Inception (bn_x5, 28x28, batch {si['batch']}): "
      f"{si['images_per_sec']:.0f} images/s forward+backward with {si['conv_impl']} "
      f"convolutions (compile {si['compile_seconds']:.1f} s, peak "
      f"{res['peak_memory_mb']['small_bn_inception']:.1f} MiB); XLA's convolutions "
      f"{si['xla_conv_images_per_sec']:.0f} images/s (ours {si['vs_xla_conv']:.2f}x, "
      f"compile {si['xla_conv_compile_seconds']:.1f} s)"
    )
    if "torch_images_per_sec" in si:
      line += (
        f"; PyTorch {si['torch_version']} eager {si['torch_images_per_sec']:.0f} images/s "
        f"(ours {si['vs_torch']:.2f}x), {si['params']:,} parameters in both"
      )
    print(line)
  if "figure1" in res:
    f1 = res["figure1"]
    print(
      f"Figure 1 reproduction (scripts/figure1.sh: 2 x 50,000 steps, evals every 250, the "
      f"figure): {f1['wall_seconds']:.1f} s wall; the floor's matmuls alone for the "
      f"100,000 steps in this process: {f1['floor_seconds']:.1f} s"
    )
  for k, p in res.get("profile", {}).items():
    print(
      f"profile {k} (traced, so slower): {p['us_per_step']:.0f} us/step, "
      f"{p['ops_per_step']} XLA operations per step taking {p['ops_us_per_step']:.0f} us "
      f"between them; slowest:"
    )
    for name, us in p["top"]:
      print(f"    {us:7.1f} us  {name}")
  print(f"peak RSS of the process: {res['peak_rss_mb']:.0f} MB")
