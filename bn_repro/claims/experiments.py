"""The small experiments behind the claims: MNIST MLP runs over seeds, trained (or found
finished) in one directory.

Each experiment is groups of runs that differ only in seed and learning rate, so each group
trains as one batched program (training.train_batched). Groups run in `workers` processes,
each pinned to its own CPU core where the machine has that many (one core per small run is
the fastest placement on CPU). A group whose runs all finished is read, not trained again.
"""

import concurrent.futures
import copy
import dataclasses
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bn_repro import fields
from bn_repro.errors import UserError
from bn_repro.rundir import RunDir

BASE_LR = 0.5  # mnist_mlp's learning rate; the paper's multiples 5x and 30x go from it
LR_MULTIPLES = (1, 5, 30)  # BN-x5 and BN-x30 (Sec. 4.2.1)


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs of one config (`spec` + `fields`) over seeds and learning rates."""

  experiment: str
  name: str  # "bn" or "nobn"
  spec: str  # e.g. "mnist_mlp:bn_sigmoid"
  fields: Mapping[str, Any]
  lrs: tuple[float, ...] = (BASE_LR,)

  def run_name(self, lr: float, seed: int) -> str:
    return f"lr{lr:g}_seed{seed}"


def _pair(experiment: str, fixed: Mapping[str, Any], **kw: Any) -> list[Group]:
  return [
    Group(experiment, "bn", "mnist_mlp:bn_sigmoid", fixed, **kw),
    Group(experiment, "nobn", "mnist_mlp:nobn_sigmoid", fixed, **kw),
  ]


# Figure 1 (accuracy, the probe, steps to 90 %, the train-eval gap); higher learning rates;
# internal covariate shift (Santurkar et al. 2018's measure).
EXPERIMENTS: dict[str, list[Group]] = {
  "figure1": _pair(
    "figure1", {"num_steps": 10_000, "eval_every": 250, "eval_train_examples": 2_000}
  ),
  "lr": _pair(
    "lr",
    {"num_steps": 3_000, "eval_every": 500, "max_loss": 1e3},
    lrs=tuple(BASE_LR * m for m in LR_MULTIPLES),
  ),
  "ics": _pair("ics", {"num_steps": 2_000, "eval_every": 500, "ics_probe": True}),
}


def group_dir(workdir: str, group: Group) -> str:
  return os.path.join(workdir, group.experiment, group.name)


def run_dirs(workdir: str, group: Group, seeds: Sequence[int]) -> dict[tuple[float, int], str]:
  """(learning rate, seed) -> the run's directory."""
  return {
    (lr, s): os.path.join(group_dir(workdir, group), group.run_name(lr, s))
    for lr in group.lrs
    for s in seeds
  }


def configs(
  group: Group, seeds: Sequence[int], preset: str, overrides: Mapping[str, Any]
) -> list[Any]:
  """The group's configs in run_dirs' order: its fields, then `overrides` (every run)."""
  from bn_repro import configs as configs_lib

  spec = group.spec + (f",{preset}" if preset else "")
  try:
    base = configs_lib.get(spec)
  except ValueError as e:
    raise UserError(str(e), field="--preset") from None
  for field, value in {**group.fields, **overrides}.items():
    set_field(base, field, value)
  out = []
  for lr in group.lrs:
    for s in seeds:
      c = copy.deepcopy(base)
      c.seed, c.optimizer.learning_rate = s, lr
      out.append(c)
  return out


def set_field(config: Any, field: str, value: Any) -> None:
  """Sets dotted `field` of `config`; a string is parsed like the field's value."""
  *path, last = field.split(".")
  node = config
  for part in path:
    node = node.get(part) if hasattr(node, "get") else None
    if node is None:
      break
  if node is None or last not in node:
    raise UserError(f"unknown config field {field!r}", field="--override")
  if isinstance(value, str):
    try:
      value = fields.parse_like(value, node[last])
    except ValueError as e:
      raise UserError(str(e), field=f"--override={field}") from None
  node[last] = value


def finished(dirs: Sequence[str], num_steps: int) -> bool:
  """Whether every run in `dirs` has status done (or diverged) at its last step."""
  for d in dirs:
    status = RunDir(d).status()
    if status.get("status") not in ("done", "diverged"):
      return False
    if status.get("status") == "done" and status.get("step") != num_steps:
      return False
  return True


def train_group(job: tuple[Group, list[int], str, dict[str, Any], str]) -> str:
  """Trains one group (a worker's task) unless it finished; returns what it did."""
  group, seeds, preset, overrides, workdir = job
  from bn_repro import training

  cs = configs(group, seeds, preset, overrides)
  dirs = list(run_dirs(workdir, group, seeds).values())
  name = f"{group.experiment}/{group.name}"
  if finished(dirs, cs[0].num_steps):
    return f"read {name} (finished)"
  training.train_batched(cs, dirs, spread=False)
  return f"trained {name}"


def _pin(cores: Any, counter: Any) -> None:
  """A worker's initializer: its own core, when there is one per worker."""
  with counter.get_lock():
    i = counter.value
    counter.value += 1
  if cores:
    os.sched_setaffinity(0, {cores[i % len(cores)]})


def run_all(
  workdir: str,
  groups: Sequence[Group],
  seeds: Sequence[int],
  preset: str = "",
  overrides: Mapping[str, Any] | None = None,
  workers: int = 2,
  log: Any = print,
) -> None:
  """Trains every group not finished yet: in this process (workers = 1) or in `workers`
  processes, each on its own core when the process may use at least that many."""
  overrides = dict(overrides or {})
  for g in groups:  # bad input is one line before anything runs
    configs(g, seeds, preset, overrides)
  jobs = [(g, list(seeds), preset, overrides, workdir) for g in groups]
  if workers <= 1:
    for job in jobs:
      log(train_group(job))
    return
  usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  cores = usable if len(usable) >= workers else []
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
  ).strip()
  ctx = multiprocessing.get_context("spawn")
  counter = ctx.Value("i", 0)
  with concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=ctx, initializer=_pin, initargs=(cores, counter)
  ) as pool:
    for done in pool.map(train_group, jobs):
      log(done)
