"""Metric events: JSON lines (one object per event, always with "step").

The writer also mirrors scalars to TensorBoard event files (tensorboardX, no
TensorFlow needed). Where the files are is bn_repro.rundir's business; reading a
run's events is `RunDir(workdir).metrics()`, which never imports the training code.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from etils import epath


def _is_finite_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


class MetricWriter:
  """Appends metric events to a JSON-lines file and, given a folder, to TensorBoard.

  Each event is one line, written and closed at once, so a killed process loses no
  event it wrote. On resume from step S, `truncate_after(S)` drops events written after
  the last checkpoint so that a resumed run's file equals an uninterrupted one's.
  """

  def __init__(self, path: epath.PathLike, tensorboard_dir: epath.PathLike | None = None):
    self.path = epath.Path(path)
    self._tb = None
    if tensorboard_dir is not None:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.fspath(tensorboard_dir))

  def truncate_after(self, step: int) -> None:
    if not self.path.exists():
      return
    kept = [e for e in parse_events(self.path.read_text()) if e["step"] <= step]
    tmp = self.path.parent / (self.path.name + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
    tmp.replace(self.path)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    event: dict[str, Any] = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v) if not isinstance(v, (str, bool)) else v
      # JSON has no NaN/Inf: write them as strings so the file stays valid.
      event[k] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
    with self.path.open("a") as f:
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


def parse_events(text: str) -> list[dict[str, Any]]:
  """The events of a metrics file's text, in order; "nan"/"inf" strings come back as floats."""
  events = []
  for line in text.splitlines():
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
