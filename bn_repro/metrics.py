"""Metrics on disk: JSON lines (one object per event, always with "step").

The writer also mirrors scalars to TensorBoard event files (tensorboardX, no
TensorFlow needed). Readers (`read_metrics`) are what scripts use; they never
import the training code.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _is_finite_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


class MetricWriter:
  """Appends metric events to `<workdir>/metrics.jsonl` and TensorBoard.

  On resume from step S, `truncate_after(S)` drops events written after the
  last checkpoint so that a resumed run's file equals an uninterrupted one's.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = [e for e in read_metrics(os.path.dirname(self.path)) if e["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for e in kept:
        f.write(json.dumps(e) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    event = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v) if not isinstance(v, (str, bool)) else v
      # JSON has no NaN/Inf: write them as strings so the file stays valid.
      event[k] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
    with open(self.path, "a") as f:
      f.write(json.dumps(event) + "\n")
    if self._tb is not None:
      for k, v in event.items():
        if k != "step" and _is_finite_number(v):
          self._tb.add_scalar(k, v, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """A MetricWriter that writes nothing (processes other than 0 in a multi-host run)."""

  def truncate_after(self, step: int) -> None:
    del step

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON atomically (a temporary file per process, then a rename)."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=list)
    f.write("\n")
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All events of a run, in file order; "nan"/"inf" strings come back as floats."""
  path = os.path.join(workdir, METRICS_FILE)
  events = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      e = json.loads(line)
      for k, v in e.items():
        if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
          e[k] = float(v)
      events.append(e)
  return events


def series(events: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of every event that has `key`."""
  steps, values = [], []
  for e in events:
    if key in e:
      steps.append(e["step"])
      values.append(e[key])
  return steps, values
