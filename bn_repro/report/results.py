"""Reading what runs and sweeps wrote: a run's eval series (`Run`), a sweep's points.

Every file is read through bn_repro.rundir (RunDir, SweepDir) and every dotted config
field through bn_repro.fields; a file that cannot be read is a UserError naming it.
"""

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from bn_repro import fields
from bn_repro.errors import UserError
from bn_repro.metrics import series
from bn_repro.rundir import RunDir, SweepDir

ACC_KEY = "eval/accuracy"
TOP5_KEY = "eval/top5"
PROBE_KEYS = {"p15": "probe/p15", "p50": "probe/p50", "p85": "probe/p85"}
EVAL_KEYS = (ACC_KEY,) + tuple(PROBE_KEYS.values())

LR_FIELD = "optimizer.learning_rate"
SEED_FIELD = "seed"
BN_FIELD = "model.use_bn"
NONLINEARITY_FIELD = "model.nonlinearity"


@dataclasses.dataclass
class Run:
  """Eval series of one run dir (values keyed by step)."""

  path: str
  steps: list[int]
  accuracy: dict[int, float]
  p15: dict[int, float]
  p50: dict[int, float]
  p85: dict[int, float]
  use_bn: bool | None = None
  nonlinearity: str | None = None
  probe_unit: Any = None
  seed: int | None = None
  # Which network probe/* measured: "train" (BN with batch statistics) or "inference"
  # (population statistics; also runs from before config.probe_network existed).
  probe_network: str = "inference"

  def percentile(self, name: str) -> dict[int, float]:
    return {"p15": self.p15, "p50": self.p50, "p85": self.p85}[name]


def _to_float(value: Any, key: str, path: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"{key}={value!r} in {path} is not a number")
  return float(value)


def read_events(run_dir: RunDir) -> list[dict[str, Any]]:
  """A run's metric events; UserError naming the file when it cannot be read."""
  try:
    return run_dir.metrics()
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {run_dir.metrics_path}: {e}") from e


def run_from_events(
  path: str,
  events: list[dict[str, Any]],
  source: Any,
  max_step: int | None = None,
  probe: str = "probe",
) -> Run:
  """The eval series of `events` (step <= max_step); `source` names them in errors.
  `probe`: the percentiles' metric prefix ("probe", or "probe_inference" for the
  inference network's when the run recorded both).

  Raises:
    UserError: an event has no integer step, or no event is an eval (with step <= max_step).
  """
  for e in events:
    if not isinstance(e, dict) or not isinstance(e.get("step"), int):
      raise UserError(f"{source} has an event without an integer step")
  events = [e for e in events if max_step is None or e["step"] <= max_step]
  keys = {n: f"{probe}/{n}" for n in PROBE_KEYS}
  evals = [e for e in events if ACC_KEY in e or any(k in e for k in keys.values())]
  if not evals:
    where = f" with step <= {max_step}" if max_step is not None else ""
    raise UserError(f"no eval events{where} in {source}")

  def by_step(key: str) -> dict[int, float]:
    steps, values = series(evals, key)
    # A later event at the same step wins.
    return {s: _to_float(v, key, source) for s, v in zip(steps, values)}

  return Run(
    path=path,
    steps=sorted({e["step"] for e in evals}),
    accuracy=by_step(ACC_KEY),
    p15=by_step(keys["p15"]),
    p50=by_step(keys["p50"]),
    p85=by_step(keys["p85"]),
  )


def describe(run: Run, config: Any) -> Run:
  """Sets `run`'s model fields (use_bn, nonlinearity, probe_unit) from a config dict."""
  if isinstance(config, Mapping):
    use_bn = fields.get(config, BN_FIELD, None)
    run.use_bn = None if use_bn is None else bool(use_bn)
    run.nonlinearity = fields.get(config, NONLINEARITY_FIELD, None)
    run.probe_unit = fields.get(config, "model.probe_unit", None)
    seed = fields.get(config, SEED_FIELD, None)
    run.seed = seed if isinstance(seed, int) else None
    network = fields.get(config, "probe_network", "inference")
    run.probe_network = "inference" if network == "inference" else "train"
  return run


def load_run(run_dir: str | os.PathLike, max_step: int | None = None, probe: str = "probe") -> Run:
  """Reads the eval events (step <= max_step) and, when it has one, the config of a run dir
  (`probe`: see run_from_events).

  Raises:
    UserError: the dir or its metrics file is missing or unreadable, or it has
      no eval events (with step <= max_step).
  """
  rd = RunDir(run_dir)
  if not rd.exists():
    raise UserError(f"run dir {os.fspath(run_dir)} does not exist")
  if not rd.has_metrics():
    raise UserError(f"{rd.metrics_path} does not exist")
  run = run_from_events(os.fspath(run_dir), read_events(rd), rd.metrics_path, max_step, probe)
  run = describe(run, rd.config()) if rd.has_config() else run
  if probe != "probe":
    run.probe_network = "inference"
  return run


def accuracy_summary(run: Run) -> dict[str, Any]:
  """Final and best (the earliest of the highest finite) eval accuracy, with their steps."""
  acc_steps = sorted(run.accuracy)
  final_step = acc_steps[-1] if acc_steps else None
  finite = [s for s in acc_steps if math.isfinite(run.accuracy[s])]
  best_step = max(finite, key=lambda s: (run.accuracy[s], -s)) if finite else None
  return {
    "final_step": final_step,
    "final_accuracy": run.accuracy[final_step] if final_step is not None else None,
    "best_step": best_step,
    "best_accuracy": run.accuracy[best_step] if best_step is not None else None,
  }


# ---------------------------------------------------------------------------
# Sweeps.


@dataclasses.dataclass
class PointResult:
  """One point of the sweep: its settings, status and eval summary."""

  name: str
  fields: dict[str, Any]  # grid values (dotted field -> value)
  command: str
  config: dict[str, Any]  # the run's config ({} before the point started)
  status: str
  config_spec: str = ""  # the sweep record's --config value, e.g. "x:bn_x5"
  status_step: int | None = None
  error: str = ""
  events: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metric events
  run: Run | None = None  # when the point has eval accuracy events
  environment: dict[str, Any] | None = None
  final_step: int | None = None
  final_accuracy: float | None = None
  best_step: int | None = None
  best_accuracy: float | None = None
  steps_to_target: int | None = None
  top5: dict[int, float] = dataclasses.field(default_factory=dict)  # eval/top5 by step

  @property
  def diverged_at(self) -> int | None:
    return self.status_step if self.status == "diverged" else None

  def value(self, field: str) -> Any:
    """A config value: the resolved config, else the grid value."""
    absent = object()
    value = fields.get(self.config, field, absent)
    return self.fields.get(field) if value is absent else value


@dataclasses.dataclass
class SweepResults:
  spec: str
  description: str
  record: dict[str, Any]  # the sweep's record
  aliases: dict[str, str]
  grid_fields: list[str]
  points: list[PointResult]

  def alias(self, field: str) -> str:
    return self.aliases.get(field, field.rsplit(".", 1)[-1])


def load_sweep(sweep_dir: str | os.PathLike, target: float) -> SweepResults:
  """Reads the sweep's record and every point's files; UserError on anything unreadable."""
  sd = SweepDir(sweep_dir)
  if not sd.path.is_dir():
    raise UserError(f"{sd} is not a directory", field="--sweep_dir")
  record = sd.record()
  if not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in record["points"]):
    raise UserError(f"{sd.record_path} has no list of named points", field="--sweep_dir")
  points = [load_point(sd.point(p["name"]), p, target) for p in record["points"]]
  grid_fields = []
  for p in points:
    grid_fields += [f for f in p.fields if f not in grid_fields]
  return SweepResults(
    spec=record.get("sweep", "?"),
    description=record.get("description", ""),
    record=record,
    aliases=record.get("aliases") or {},
    grid_fields=grid_fields,
    points=points,
  )


def _top5(events: list[dict[str, Any]]) -> dict[int, float]:
  return {
    e["step"]: float(e[TOP5_KEY])
    for e in events
    if isinstance(e.get("step"), int)
    and isinstance(e.get(TOP5_KEY), (int, float))
    and not isinstance(e.get(TOP5_KEY), bool)
  }


def load_point(run_dir: RunDir, entry: Mapping[str, Any], target: float) -> PointResult:
  """A point of a sweep record (`entry`) and what its run directory holds so far."""
  grid = dict(entry.get("fields") or {})
  p = PointResult(
    name=entry["name"],
    fields=grid,
    command=entry.get("command", ""),
    config={},
    status="pending",
    config_spec=str(entry.get("config") or grid.get("config") or ""),
  )
  if not run_dir.exists():
    return p
  if run_dir.has_config():
    p.config = run_dir.config()
  status = run_dir.status()
  p.status = str(status.get("status", "pending"))
  p.status_step = status.get("step")
  p.error = str(status.get("error", ""))
  p.environment = run_dir.environment()
  if not run_dir.has_metrics():
    return p
  p.events = read_events(run_dir)
  if not any(ACC_KEY in e for e in p.events):
    return p
  p.run = describe(run_from_events(str(run_dir), p.events, run_dir.metrics_path), p.config)
  p.top5 = _top5(p.events)
  s = accuracy_summary(p.run)
  p.best_step, p.best_accuracy = s["best_step"], s["best_accuracy"]
  if p.status == "done":
    p.final_step, p.final_accuracy = s["final_step"], s["final_accuracy"]
  p.steps_to_target = next(
    (step for step in sorted(p.run.accuracy) if p.run.accuracy[step] >= target), None
  )
  return p
