"""Metric events: JSON lines (one object per event, always with "step").

The writer also mirrors scalars to a TensorBoard event file (tensorboardX's protos and
record writer, no TensorFlow needed), with the config as text and HParams. Where the
files are is bn_repro.rundir's business; reading a run's events is
`RunDir(workdir).metrics()`, which never imports the training code.
"""

import json
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from etils import epath

from bn_repro import fields
from bn_repro.storage import is_local, write_text_atomic

# The metrics the HParams dashboard shows beside each run's hyperparameters.
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "train/loss")


def _is_finite_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


class MetricWriter:
  """Appends metric events to a JSON-lines file and, given a folder, to TensorBoard.

  Each event is one line, written and closed at once, so a killed process loses no
  event it wrote. On resume from step S, `truncate_after(S)` drops events written after
  the last checkpoint so that a resumed run's file equals an uninterrupted one's, and
  rewrites the TensorBoard folder as one fresh event file holding the events kept
  (a killed process loses the events it had not flushed; the loop flushes at every
  checkpoint). `write_config` adds the config as text and as HParams. Object storage
  cannot append: there the writer keeps the file's lines and uploads the whole file
  after each event (one atomic object write), so the object always holds every event
  written before it, none half.
  """

  def __init__(self, path: epath.PathLike, tensorboard_dir: epath.PathLike | None = None):
    self.path = epath.Path(path)
    self._lines: list[str] | None = None  # on object storage: the file's lines
    if not is_local(self.path):
      self._lines = self.path.read_text().splitlines(True) if self.path.exists() else []
    self._tb_dir = None if tensorboard_dir is None else epath.Path(tensorboard_dir)
    self._tb: EventFile | None = None

  def _board(self) -> "EventFile | None":
    """The TensorBoard event file, opened on first use (None when TensorBoard is off)."""
    if self._tb is None and self._tb_dir is not None:
      self._tb = EventFile(self._tb_dir)
    return self._tb

  def truncate_after(self, step: int) -> None:
    """Keeps the events up to `step`, in metrics.jsonl and as a fresh TensorBoard file."""
    events = parse_events(self.path.read_text()) if self.path.exists() else []
    kept = [e for e in events if e["step"] <= step]
    if self.path.exists():
      write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in kept))
    if self._lines is not None:
      self._lines = [json.dumps(e) + "\n" for e in kept]
    if self._tb_dir is None:
      return
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._tb_dir.exists():
      for f in self._tb_dir.glob("events.out.tfevents.*"):
        f.unlink()
    for e in kept:
      self._to_board(e)
    self._board()  # a fresh file even when nothing is kept
    self.flush()

  def write_config(self, config: Mapping[str, Any], metrics: Sequence[str] = HPARAM_METRICS):
    """The config as TensorBoard text (JSON) and HParams (every dotted field), with
    `metrics` as the HParams dashboard's metric columns."""
    board = self._board()
    if board is None:
      return
    from tensorboardX import summary

    text = json.dumps(config, indent=2, sort_keys=True, default=list)
    board.add(0, summary.text("config", "```\n" + text + "\n```"))
    flat = {
      k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=list)
      for k, v in fields.flatten(config).items()
    }
    for s in summary.hparams(flat, {m: 0.0 for m in metrics}):
      board.add(0, s)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    event: dict[str, Any] = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v) if not isinstance(v, (str, bool)) else v
      # JSON has no NaN/Inf: write them as strings so the file stays valid.
      event[k] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
    self._append(json.dumps(event) + "\n")
    self._to_board(event)

  def _append(self, line: str) -> None:
    if self._lines is None:
      with self.path.open("a") as f:
        f.write(line)
    else:
      self._lines.append(line)
      write_text_atomic(self.path, "".join(self._lines))

  def _to_board(self, event: Mapping[str, Any]) -> None:
    board = self._board()
    if board is not None:
      from tensorboardX import summary

      for k, v in event.items():
        if k != "step" and _is_finite_number(v):
          board.add(event["step"], summary.scalar(k, v))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class EventFile:
  """One TensorBoard event file in `folder`, written synchronously: `flush` puts every
  event added so far in the file (tensorboardX's SummaryWriter queues events for a thread,
  so its flush does not)."""

  def __init__(self, folder: epath.Path):
    from tensorboardX.event_file_writer import EventsWriter

    folder.mkdir(parents=True, exist_ok=True)
    self._writer = EventsWriter(os.fspath(folder / "events"))

  def add(self, step: int, summary: Any) -> None:
    from tensorboardX.proto import event_pb2

    event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
    self._writer.write_event(event)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class NullWriter:
  """A MetricWriter that writes nothing (processes other than 0 in a multi-host run)."""

  def truncate_after(self, step: int) -> None:
    del step

  def write_config(self, config: Mapping[str, Any]) -> None:
    del config

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


def tensorboard_scalars(folder: epath.PathLike) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every scalar in a folder's event files, in file order
  (a reader for checks; TensorBoard itself reads the folder)."""
  from tensorboardX.proto import event_pb2

  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(epath.Path(folder).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):  # TFRecord: length, its CRC, the record, its CRC
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      if pos + 16 + length > len(data):
        break  # a record cut short by a killed writer
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 16 + length
      for v in event.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
  return out
