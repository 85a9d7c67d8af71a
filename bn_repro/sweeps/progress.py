"""The sweep's progress line: points finished of all, failures so far, an overall ETA."""

import datetime
import time


def _clock(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
  """Counts the selected points as they finish; `line()` says where the sweep stands.

  The ETA is the time per point finished by this runner (wall time since it started,
  so points running side by side count as they overlap) times the points left.
  """

  def __init__(self, total: int, now: float | None = None):
    self.total = total
    self.done = 0  # finished in any way, skipped ones included
    self.failed = 0
    self.ran = 0  # finished by this runner
    self.started = time.monotonic() if now is None else now

  def skipped(self) -> None:
    self.done += 1

  def finished(self, outcome: str) -> None:
    self.done += 1
    self.ran += 1
    self.failed += outcome == "failed"

  def line(self, running: int = 0, now: float | None = None) -> str:
    now = time.monotonic() if now is None else now
    left = self.total - self.done
    if left == 0:
      eta = "none left"
    elif self.ran:
      eta = f"ETA {_clock((now - self.started) / self.ran * left)}"
    else:
      eta = "ETA after the first point"
    return (
      f"sweep: {self.done}/{self.total} finished, {self.failed} failed, "
      f"{running} running, elapsed {_clock(now - self.started)}, {eta}"
    )
