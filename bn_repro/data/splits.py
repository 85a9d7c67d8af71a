"""The tfds split syntax ('test[:8000]', 'train[10%:]'), resolved by us.

Both data sources resolve splits here, so a config selects the same examples
whether it reads IDX files or a prepared tfds dataset.
"""

import dataclasses
import re

from bn_repro.errors import UserError

_SPLIT_RE = re.compile(
  r"^(?P<name>[A-Za-z0-9_]+)"
  r"(?:\[(?P<start>[^:\[\]]*):(?P<stop>[^:\[\]]*)\])?$"
)
_BOUND_RE = re.compile(r"^(?P<value>-?\d+(?:\.\d+)?)(?P<percent>%?)$")
_SYNTAX = (
  "use a split name with an optional slice of integers or percents,"
  " e.g. 'train', 'test[:8000]', 'test[-2000:]' or 'train[10%:]'"
)


@dataclasses.dataclass(frozen=True)
class Split:
  """A parsed split: base split `name`, optional bounds, and their unit."""

  text: str
  field: str
  name: str
  start: float | None = None
  stop: float | None = None
  percent: bool = False

  def resolve(self, num_examples: int) -> tuple[int, int]:
    """Absolute [start, stop) within a base split of `num_examples`."""
    bounds = []
    for value, default in ((self.start, 0), (self.stop, num_examples)):
      if value is None:
        bounds.append(default)
        continue
      if self.percent:
        value = int(round(value * num_examples / 100.0))
      if abs(value) > num_examples:
        raise UserError(
          f"{self.text!r} reaches past the {num_examples} examples of split"
          f" {self.name!r}; use bounds between -{num_examples} and"
          f" {num_examples}.",
          field=self.field,
        )
      bounds.append(int(value) + num_examples if value < 0 else int(value))
    start, stop = bounds
    if start >= stop:
      raise UserError(
        f"{self.text!r} selects no examples (range {start}:{stop} of"
        f" {num_examples}); give a start below the stop.",
        field=self.field,
      )
    return start, stop


def parse_split(text: str, field: str, known: tuple[str, ...]) -> Split:
  """Parses `text` (config field `field`); its base name must be in `known`."""
  match = _SPLIT_RE.match(text.strip()) if isinstance(text, str) else None
  if not match:
    raise UserError(f"cannot parse split {text!r}; {_SYNTAX}.", field=field)
  name = match["name"]
  if name not in known:
    raise UserError(
      f"unknown split {name!r} in {text!r}; use one of {', '.join(known)} with an optional slice.",
      field=field,
    )
  if match["start"] is None:
    return Split(text=text, field=field, name=name)
  raw = (match["start"], match["stop"])
  bounds = [_BOUND_RE.match(b) if b else None for b in raw]
  if not any(raw) or any(b is None for b, r in zip(bounds, raw) if r):
    raise UserError(f"cannot parse split {text!r}; {_SYNTAX}.", field=field)
  units = {bool(b["percent"]) for b in bounds if b}
  if len(units) > 1:
    raise UserError(
      f"split {text!r} mixes percents and example counts; use the same unit on both sides of ':'.",
      field=field,
    )
  percent = units.pop()
  values: list[float | None] = []
  for b in bounds:
    if b is None:
      values.append(None)
    elif percent:
      values.append(float(b["value"]))
      if abs(float(b["value"])) > 100:
        raise UserError(
          f"split {text!r} has a percent outside -100%..100%; use percents within that range.",
          field=field,
        )
    elif "." in b["value"]:
      raise UserError(
        f"split {text!r} has a fractional example count; use integers or percents.", field=field
      )
    else:
      values.append(int(b["value"]))
  return Split(text=text, field=field, name=name, start=values[0], stop=values[1], percent=percent)


def check_disjoint(
  train: Split, train_range: tuple[int, int], eval_: Split, eval_range: tuple[int, int]
) -> None:
  """Raises `UserError` if the train and eval splits share examples."""
  if train.name != eval_.name:
    return
  lo = max(train_range[0], eval_range[0])
  hi = min(train_range[1], eval_range[1])
  if lo < hi:
    raise UserError(
      f"eval split {eval_.text!r} overlaps train split {train.text!r}"
      f" (examples {lo}..{hi - 1} of {train.name!r}), so evaluation would"
      " use training data; choose disjoint ranges such as 'test[:8000]' and"
      " 'test[8000:]'.",
      field=eval_.field,
    )
