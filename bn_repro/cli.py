"""What every command line of the project shares: one-line errors."""

import logging
import os
import sys
from collections.abc import Callable, Sequence

from bn_repro.errors import EXIT_BAD_INPUT


def report(program: str, message: str) -> int:
  """Prints `<program>: error: <message>` as one line on stderr; returns EXIT_BAD_INPUT."""
  print(f"{program}: error: {message}".replace("\n", " "), file=sys.stderr)
  return EXIT_BAD_INPUT


def first_line(e: BaseException) -> str:
  """The first line of an exception's message ('' if it has none)."""
  lines = str(e).strip().splitlines()
  return lines[0] if lines else ""


def one_line_flags_parser(program: str) -> Callable[[Sequence[str]], list[str]]:
  """An absl `app.run(..., flags_parser=)`: a bad flag is one line and exit 2, no usage dump."""

  def parse(argv: Sequence[str]) -> list[str]:
    from absl import flags

    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(report(program, first_line(e)))

  return parse


def is_own_line(record: logging.LogRecord, libraries_from: int = logging.ERROR) -> bool:
  """Whether a log record is bn_repro's own, or another library's at `libraries_from` or up
  (orbax logs every save, tfds warns about empty folders)."""
  return record.levelno >= libraries_from or f"{os.sep}bn_repro{os.sep}" in record.pathname


def own_absl_lines_only() -> None:
  """absl's handler (bn-repro, a sweep's batched child) keeps the records `is_own_line` keeps."""
  from absl import logging as absl_logging

  absl_logging.get_absl_handler().addFilter(is_own_line)


def own_log_lines_only() -> None:
  """Logs to stderr bn_repro's own lines from WARNING up and no other library's below CRITICAL.

  For a command line without absl's app.run: a library's error that bn_repro turns into a
  UserError (orbax on a checkpoint it cannot parse) would otherwise print before the one
  line that a bad input prints.
  """
  for h in list(logging.root.handlers):  # logging.basicConfig's (absl calls it on first use)
    if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__):
      logging.root.removeHandler(h)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
  handler.addFilter(lambda r: is_own_line(r, libraries_from=logging.CRITICAL))
  logging.root.addHandler(handler)
  logging.root.setLevel(logging.WARNING)
