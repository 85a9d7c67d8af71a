"""Training speed of the MNIST MLP, ours next to baselines, measured in one process.

  python scripts/benchmark.py [--idx_dir=../shared/data/mnist-t10k] [--steps=500] [--repeats=9]
    [--figure1] [--profile] [--noinception] [--json]

For BN on and off it times, on one device and interleaved round by round (so
that machine noise hits all alike), these loops of `--steps` SGD steps (batch 60):
  floor     the step's matrix multiplications alone (forward, weight and input
            gradients, the update) in one lax.scan: no nonlinearity, no BN, no loss;
  ours      bn_repro's compiled training chunk (data on device, lax.scan, pmap);
  per-step  a plain loop: jax.jit of one step with flax.linen.BatchNorm, one
            Python dispatch and one host-to-device batch per step;
  torch     if PyTorch is importable (never a dependency): the same MLP in a
            PyTorch eager loop (scripts/torch_reference.py).
Each loop's speed is its fastest round (timeit's rule: the round least disturbed
by other load; every round is in --json), and each ratio the median over rounds of
the two loops' speeds in the same round. It prints steps/s, each loop's ratio
to the floor, our speed-up over the per-step and PyTorch loops, compile time, each
compiled program's peak memory (XLA's memory analysis: arguments, results and
temporaries, per device) and the process's peak RSS; 8 seeds of the BN MLP trained
together in one program (bn_repro.batched, vmap over runs, spread over one CPU
device per core as the sweep runner's --batched does, and on one device) against
the same runs one after another, in run-steps/s; the small BN-Inception's images/s
(forward + backward) and compile time, with the convolutions config.model.conv_impl="auto" picks (im2col on CPU) and
with XLA's own, and PyTorch eager's on the same network. --figure1 (needs --idx_dir) also
times the whole Figure 1 reproduction, `scripts/figure1.sh` in a subprocess as a
user runs it. --profile adds where the time of one step goes: the XLA operations
of the floor's and our steps, in microseconds per step, from a jax.profiler trace.
Without --idx_dir it uses random images (speed does not depend on pixel values).
"""

import json
import os
import resource
import statistics
import sys
import time

from absl import app, flags

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_SCRIPTS))
sys.path.insert(0, _SCRIPTS)

_IDX_DIR = flags.DEFINE_string("idx_dir", "", "IDX directory with t10k files; '' = random images.")
_STEPS = flags.DEFINE_integer("steps", 500, "Steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Interleaved rounds.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_FIGURE1 = flags.DEFINE_bool(
  "figure1", False, "Also time the whole Figure 1 reproduction (2 x 50,000 steps)."
)
_PROFILE = flags.DEFINE_bool(
  "profile", False, "Also print the XLA operations of one step and their time."
)
_INCEPTION = flags.DEFINE_bool("inception", True, "Also time the small BN-Inception.")


def _datasets(idx_dir: str):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bn_repro import data  # pylint: disable=g-import-not-at-top

  if idx_dir:
    cfg = _config("bn_sigmoid", idx_dir).data
    return data.load_splits(cfg)
  rng = np.random.default_rng(0)
  make = lambda n: data.ArrayDataset(
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)
  )
  return make(8000), make(2000)


def _config(variant: str, idx_dir: str):
  from bn_repro.configs import mnist_mlp  # pylint: disable=g-import-not-at-top

  c = mnist_mlp.get_config(f"{variant},t10k")
  c.num_devices = 1
  c.data.idx_dir = idx_dir
  return c


class Ours:
  """bn_repro's training chunk, compiled once, timed without compilation."""

  def __init__(self, variant, train_ds, eval_ds, steps):
    from bn_repro import parallel, train  # pylint: disable=g-import-not-at-top

    self.trainer = train.Trainer(_config(variant, ""), train_ds, eval_ds, parallel.devices(1))
    self.state = parallel.replicate(self.trainer.init_state(train_ds.images[:2]), self.trainer.devs)
    self.steps, self.pos = steps, 0
    t = time.perf_counter()
    self.run()
    self.compile_seconds = self.trainer.compile_seconds
    self.first_call_seconds = time.perf_counter() - t
    self.compiled = self.trainer._compiled[steps]  # pylint: disable=protected-access

  def run(self):
    self.state, _, _ = self.trainer.train(self.state, self.pos, self.steps)
    self.pos += self.steps


class Floor:
  """The MLP step's matmuls and the SGD update only, in one lax.scan."""

  def __init__(self, train_ds, steps):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax import lax  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(train_ds), (steps, 60))
    self.x = jnp.asarray(train_ds.images[idx].reshape(steps, 60, -1), jnp.float32) / 255
    shapes = [(784, 100), (100, 100), (100, 100), (100, 10)]
    self.w = [jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.05) for s in shapes]

    def step(ws, x):
      hs = [x]
      for w in ws:
        hs.append(hs[-1] @ w)
      g = hs[-1]
      grads = [None] * len(ws)
      for i in reversed(range(len(ws))):
        grads[i] = hs[i].T @ g
        if i:
          g = g @ ws[i].T
      return [w - 1e-3 * dw for w, dw in zip(ws, grads)], None

    self.fn = jax.jit(lambda ws, xs: lax.scan(step, ws, xs)[0])
    t = time.perf_counter()
    self.compile_seconds = 0.0
    compiled = self.fn.lower(self.w, self.x).compile()
    self.compile_seconds = time.perf_counter() - t
    self.fn = self.compiled = compiled
    self.steps = steps

  def run(self):
    import jax  # pylint: disable=g-import-not-at-top

    self.w = jax.block_until_ready(self.fn(self.w, self.x))


class PerStep:
  """The usual Flax loop: jax.jit(step) with flax.linen.BatchNorm, one dispatch per step."""

  def __init__(self, use_bn, train_ds, steps):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, train):
        x = x.reshape((x.shape[0], -1))
        for _ in range(3):
          x = nn.Dense(100, use_bias=not use_bn)(x)
          if use_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.99, use_fast_variance=False)(
              x
            )
          x = nn.sigmoid(x)
        return nn.Dense(10)(x)

    net, tx = Net(), optax.sgd(0.5)
    v = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)), train=False)
    self.params, self.stats = v["params"], v.get("batch_stats", {})
    self.opt = tx.init(self.params)

    @jax.jit
    def step(params, stats, opt, x, y):
      def loss_fn(p):
        logits, upd = net.apply(
          {"params": p, "batch_stats": stats},
          x.astype(jnp.float32) / 255,
          train=True,
          mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

      (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(g, opt)
      return optax.apply_updates(params, updates), upd.get("batch_stats", {}), opt, loss

    self.images, self.labels = train_ds.images, train_ds.labels
    self.rng = np.random.default_rng(0)
    self.step, self.steps = step, steps
    t = time.perf_counter()
    self._one()
    self.compile_seconds = time.perf_counter() - t
    self.compiled = step.lower(
      self.params, self.stats, self.opt, self.images[:60], self.labels[:60]
    ).compile()  # the program the loop runs

  def _one(self):
    idx = self.rng.integers(0, len(self.images), 60)
    self.params, self.stats, self.opt, self.loss = self.step(
      self.params, self.stats, self.opt, self.images[idx], self.labels[idx]
    )

  def run(self):
    import jax  # pylint: disable=g-import-not-at-top

    for _ in range(self.steps):
      self._one()
    jax.block_until_ready(self.loss)


class Batched:
  """`runs` seeds of the MLP (BN) in one program (bn_repro.batched), run-steps per second."""

  def __init__(self, train_ds, eval_ds, steps, runs, spread=True):
    from bn_repro import batched, parallel  # pylint: disable=g-import-not-at-top

    configs = []
    for seed in range(runs):
      c = _config("bn_sigmoid", "")
      c.seed = seed
      configs.append(c)
    self.shards = parallel.run_shards(runs, 1) if spread else 1
    self.bt = batched.BatchedTrainer(configs, train_ds, eval_ds, parallel.devices(1), self.shards)
    self.states = self.bt.place(self.bt.init_states())
    self.steps, self.pos = steps, 0
    t = time.perf_counter()
    self.run()
    self.compile_seconds = time.perf_counter() - t
    self.compiled = self.bt._compiled[steps]  # pylint: disable=protected-access

  def run(self):
    self.states, _, _ = self.bt.train(self.states, self.pos, self.steps)
    self.pos += self.steps


class SmallInception:
  """Small BN-Inception (inception_small:bn_x5, MNIST-sized), forward + backward;
  `conv_impl` as config.model.conv_impl (models/conv.py)."""

  def __init__(self, train_ds, eval_ds, steps, conv_impl="auto"):
    from bn_repro import parallel, train  # pylint: disable=g-import-not-at-top
    from bn_repro.configs import inception_small  # pylint: disable=g-import-not-at-top

    c = inception_small.get_config("bn_x5")
    c.model.conv_impl = conv_impl
    c.num_devices = 1
    self.trainer = train.Trainer(c, train_ds, eval_ds, parallel.devices(1))
    self.state = parallel.replicate(self.trainer.init_state(), self.trainer.devs)
    self.steps, self.pos, self.batch = steps, 0, c.batch_size
    self.run()
    self.compile_seconds = self.trainer.compile_seconds
    self.compiled = self.trainer._compiled[steps]  # pylint: disable=protected-access

  def run(self):
    self.state, _, _ = self.trainer.train(self.state, self.pos, self.steps)
    self.pos += self.steps


def figure1_wall_seconds(idx_dir: str) -> float:
  """Wall seconds of `scripts/figure1.sh` on the IDX files: both runs (50,000 steps each,
  evals every 250, as the script trains them), and the figure."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    proc = subprocess.run(
      [os.path.join(_SCRIPTS, "figure1.sh"), os.path.join(tmp, "fig1")],
      cwd=os.path.dirname(_SCRIPTS),
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
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    t = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    with gzip.open(glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, count = collections.defaultdict(float), collections.Counter()
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


def _peak_mb(compiled) -> float:
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


def measure(
  idx_dir: str,
  steps: int,
  repeats: int,
  with_figure1: bool = False,
  with_profile: bool = False,
  with_inception: bool = True,
) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  from bn_repro.models import conv  # pylint: disable=g-import-not-at-top

  train_ds, eval_ds = _datasets(idx_dir)
  floor = Floor(train_ds, steps)
  loops = {"floor": floor}
  for bn in ("bn", "nobn"):
    loops[f"ours_{bn}"] = Ours(f"{bn}_sigmoid", train_ds, eval_ds, steps)
    loops[f"per_step_{bn}"] = PerStep(bn == "bn", train_ds, steps)
  torch = torch_reference.available()
  if torch:
    for bn in ("bn", "nobn"):
      loops[f"torch_{bn}"] = torch_reference.MlpLoop(
        bn == "bn", train_ds.images, train_ds.labels, steps
      )
  runs = 8
  # As many run-steps per round as ours_bn takes, so both loops last about as long.
  loops["batched_8_runs"] = Batched(train_ds, eval_ds, max(1, steps // runs), runs)
  loops["batched_8_runs_1_device"] = Batched(
    train_ds, eval_ds, max(1, steps // runs), runs, spread=False
  )
  inception_steps = max(1, steps // 50)
  if with_inception:
    loops["small_bn_inception"] = SmallInception(train_ds, eval_ds, inception_steps)
    loops["small_bn_inception_xla_conv"] = SmallInception(
      train_ds, eval_ds, inception_steps, conv_impl="xla"
    )
  if with_inception and torch:
    loops["torch_small_bn_inception"] = torch_reference.InceptionLoop(
      train_ds.images, train_ds.labels, inception_steps
    )
  for r in loops.values():  # warm-up round
    r.run()
  rates = {k: [] for k in loops}
  for _ in range(repeats):
    for k, r in loops.items():
      rates[k].append(_time(r))
  best = {k: max(v) for k, v in rates.items()}
  peak_mb = {k: _peak_mb(r.compiled) for k, r in loops.items() if hasattr(r, "compiled")}

  def ratio(a: str, b: str, factor: float = 1.0) -> float:
    """Median over rounds of a's speed / b's speed in the same round (paired, so that
    slow spells of the machine cancel)."""
    return statistics.median(x * factor / y for x, y in zip(rates[a], rates[b]))

  # Run-steps per second: 8 runs in one program vs the same 8 one after another (ours_bn).
  batched = {"runs": runs, "sequential_run_steps_per_sec": best["ours_bn"]}
  for key, name in (("batched_8_runs", ""), ("batched_8_runs_1_device", "one_device_")):
    batched[f"{name}speedup"] = ratio(key, "ours_bn", runs)
    batched[f"{name}run_steps_per_sec"] = best.pop(key) * runs
    done = loops.pop(key)
    batched[f"{name}compile_seconds"] = done.compile_seconds
    batched[f"{name}devices"] = done.shards
  result = {
    "device": str(jax.devices()[0].device_kind),
    "steps": steps,
    "repeats": repeats,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "steps_per_sec_rounds": rates,
    "compile_seconds": {
      k: getattr(r, "compile_seconds", None)
      for k, r in loops.items()
      if not k.startswith("torch_small")
    },
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_memory_mb": peak_mb,
  }
  if with_inception:
    small = loops.pop("small_bn_inception")
    xla_conv = loops.pop("small_bn_inception_xla_conv")
    result["small_bn_inception"] = {
      "images_per_sec": best.pop("small_bn_inception") * small.batch,
      "batch": small.batch,
      "compile_seconds": small.compile_seconds,
      "conv_impl": conv.resolve("auto"),
      "xla_conv_images_per_sec": best.pop("small_bn_inception_xla_conv") * xla_conv.batch,
      "xla_conv_compile_seconds": xla_conv.compile_seconds,
      "vs_xla_conv": ratio("small_bn_inception", "small_bn_inception_xla_conv"),
    }
  if with_inception and torch:
    t_inc = loops.pop("torch_small_bn_inception")
    result["small_bn_inception"].update(
      torch_images_per_sec=best.pop("torch_small_bn_inception") * t_inc.batch,
      params=t_inc.num_params,
      torch_version=torch_reference.version(),
      vs_torch=ratio("small_bn_inception", "torch_small_bn_inception"),
    )
  result["steps_per_sec"] = best
  result["ratio_to_floor"] = {k: ratio(k, "floor") for k in best}
  result["batched"] = batched
  result["speedup_over_per_step"] = {
    bn: ratio(f"ours_{bn}", f"per_step_{bn}") for bn in ("bn", "nobn")
  }
  if torch:
    result["speedup_over_torch"] = {bn: ratio(f"ours_{bn}", f"torch_{bn}") for bn in ("bn", "nobn")}
  if with_profile:
    result["profile"] = {
      k: step_profile(loops[k], steps) for k in ("floor", "ours_bn", "ours_nobn")
    }
  if with_figure1:
    wall = figure1_wall_seconds(idx_dir)
    result["figure1"] = {"wall_seconds": wall, "floor_seconds": 2 * 50_000 / best["floor"]}
  return result


def main(argv):
  del argv
  if _FIGURE1.value and not _IDX_DIR.value:
    print("benchmark: --figure1 needs --idx_dir (the MNIST IDX files)", file=sys.stderr)
    sys.exit(2)
  if _PROFILE.value:  # read when the CPU backend starts, i.e. before jax's first use
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
  from bn_repro import parallel  # pylint: disable=g-import-not-at-top

  parallel.add_cpu_devices()  # for the batched runs, as the sweep runner's --batched does
  res = measure(
    _IDX_DIR.value, _STEPS.value, _REPEATS.value, _FIGURE1.value, _PROFILE.value, _INCEPTION.value
  )
  if _JSON.value:
    print(json.dumps(res, indent=2))
  else:
    print_table(res)


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


if __name__ == "__main__":
  app.run(main)
