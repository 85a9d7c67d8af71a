"""Figure 1 end to end for the benchmark (`scripts/benchmark.py --figure1`): scripts/figure1.sh
timed as a user runs it, each net's split read from its log, and the plain Flax peer
(bn_repro.benchmark.peer) timed side by side the same way."""

import functools
import os
import subprocess
import sys
import tempfile
import time

# The log lines of a run that bound the parts of Figure 1's split (bn_repro.training).
_MARKS = {
  "first_line": "] run: ",
  "state": "building the model's state",
  "eval_compile": "compiling the evaluation",
  "eval_compiled": "compiled and ran the evaluation",
  "train_compile": "compiling the training program",
  "train_compiled": "] compiled in ",
  "done": "] done at step",
}


def split(log: str, started: float, ended: float) -> dict[str, dict[str, float]]:
  """Each net's split of a figure1.sh run from its output `log` (lines "bn: I... " and
  "nobn: I..." with absl's HH:MM:SS.micro stamps) and the script's wall-clock start and end
  (time.time()): seconds of start-up (to the run's first line), state, the first evaluation
  (its compile included), compiling the training program, training, the evaluations and the
  checkpoints (the run's own "time:" line), and from the run's last line to the script's end
  (its exit and the figure)."""
  day = time.localtime(started)
  midnight = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))
  out = {}
  for net in ("bn", "nobn"):
    lines = [l[len(net) + 2 :] for l in log.splitlines() if l.startswith(f"{net}: I")]
    at = functools.partial(_logged_at, lines, midnight, started)
    times = next(l for l in lines if "] time: train " in l).split("] time: ")[1]
    parts = dict(p.strip().rsplit(" ", 2)[:2] for p in times.split("(")[0].split(","))
    out[net] = {
      "start_up": at("first_line") - started,
      "state": at("eval_compile") - at("state"),
      "first_eval": at("eval_compiled") - at("eval_compile"),
      "train_compile": at("train_compiled") - at("train_compile"),
      "train": float(parts["train"]),
      "evals": float(parts["eval"]),
      "checkpoints": float(parts["checkpoints"]),
      "after": ended - at("done"),
    }
  return out


def _logged_at(lines: list[str], midnight: float, started: float, mark: str) -> float:
  """time.time() of the first of `lines` holding _MARKS[mark], from its absl stamp."""
  line = next(l for l in lines if _MARKS[mark] in l)
  h, m, sec = line.split()[1].split(":")
  t = midnight + int(h) * 3600 + int(m) * 60 + float(sec)
  return t + 86400 if t < started - 60 else t  # past midnight


def wall_seconds(idx_dir: str, script: str) -> list[dict]:
  """Wall seconds and each net's split (`split`) of `script` (scripts/figure1.sh, one seed
  a net: 2 x 50,000 steps, evals every 250, the figure) on the IDX files, with the compilation
  cache empty and then warm."""
  with tempfile.TemporaryDirectory() as tmp:
    walls = []
    for attempt in ("cold", "warm"):
      t, started = time.perf_counter(), time.time()
      proc = subprocess.run(
        [script, os.path.join(tmp, attempt)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(script))),
        capture_output=True,
        text=True,
        env=dict(
          os.environ,
          FIGURE1_PRESET="t10k",
          FIGURE1_SEEDS="1",
          BN_REPRO_MNIST_DIR=os.path.abspath(idx_dir),
          BN_REPRO_CACHE_DIR=os.path.join(tmp, "cache"),
          PATH=os.path.dirname(sys.executable)
          + os.pathsep  # its `python`
          + os.environ.get("PATH", ""),
        ),
      )
      if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"benchmark: scripts/figure1.sh exited {proc.returncode}: {last}")
      wall = time.perf_counter() - t
      parts = split(proc.stdout, started, time.time())
      walls.append({"cache": attempt, "wall_seconds": wall, "split": parts})
  return walls


def peer_seconds(idx_dir: str, steps: int = 50_000) -> float:
  """Wall seconds of Figure 1's training and evaluations as plain Flax programs
  (bn_repro.benchmark.peer): the two nets side by side, one process and core each."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  pairs: list[int | None] = [*(cores[:2] if len(cores) > 1 else cores * 2)] or [None, None]
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  t = time.perf_counter()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "bn_repro.benchmark.peer",
        f"--idx_dir={idx_dir}",
        f"--bn={bn}",
        f"--steps={steps}",
      ],
      stdout=subprocess.DEVNULL,
      env=env,
      preexec_fn=None if core is None else functools.partial(os.sched_setaffinity, 0, {core}),
    )  # fmt: skip
    for bn, core in zip((True, False), pairs)
  ]
  if any(p.wait() for p in procs):
    raise SystemExit("benchmark: the Flax peer of Figure 1 failed (its stderr is above)")
  return time.perf_counter() - t
