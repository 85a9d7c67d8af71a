"""What every command line of the project shares: one-line errors, --help."""

import ast
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

from bn_repro import fields
from bn_repro.errors import EXIT_BAD_INPUT


def report(program: str, message: str) -> int:
  """Prints `<program>: error: <message>` as one line on stderr; returns EXIT_BAD_INPUT."""
  print(f"{program}: error: {message}".replace("\n", " "), file=sys.stderr)
  return EXIT_BAD_INPUT


def first_line(e: BaseException) -> str:
  """The first line of an exception's message ('' if it has none)."""
  lines = str(e).strip().splitlines()
  return lines[0] if lines else ""


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def exit_with_help(argv: Sequence[str], module: str, doc: str | None, extra: str = "") -> None:
  """With --help (-h, --helpshort) in `argv`: prints `doc`, the flags `module` defines and
  `extra` on stdout, and exits 0. (absl's own --help lists the flags of the script that
  started Python, which for a console script is a stub without any.)"""
  if not any(a in HELP_FLAGS for a in argv[1:]):
    return
  from absl import flags

  print((doc or "").strip() + "\n")
  print(flags.FLAGS.module_help(module))
  if extra:
    print("\n" + extra)
  print("\n--helpfull lists absl's and JAX's flags too.")
  sys.exit(0)


def plain_flag_error(message: str) -> str:
  """absl's flag error with its Python tuple spelled out: "flag --x=maybe: ('Non-boolean
  argument to boolean flag', 'maybe')" -> "flag --x=maybe: 'maybe' is not a boolean; use
  True or False"."""
  m = re.fullmatch(r"(flag --[^=]+=.*?): (\(.*\))", message)
  if not m:
    return message
  try:
    parts = ast.literal_eval(m.group(2))
  except (ValueError, SyntaxError):
    return message
  if not isinstance(parts, tuple) or not parts:
    return message
  if "boolean" in str(parts[0]).lower():
    return f"{m.group(1)}: {parts[-1]!r} is not a boolean; use True or False"
  return f"{m.group(1)}: " + ": ".join(str(p) for p in parts)


def config_flag_hint(
  message: str,
  given: Sequence[str],
  known: Sequence[str],
  how: str,
  spell: Callable[[str, str], str],
  module: str,
) -> str | None:
  """For absl's "Unknown command line flag 'num_steps'": a misspelt flag of `module`'s own
  as "did you mean"; a config field (also misspelt, without its prefix, or as
  `config.num_steps`) as one line saying `how` config fields are set and `spell(field,
  value)`, the flag it should have been; else None."""
  import difflib

  from absl import flags

  m = re.match(r"Unknown command line flag '([^']+)'", message)
  if not m:
    return None
  name = m.group(1)
  own = [f.name for f in flags.FLAGS.get_key_flags_for_module(module)]
  typo = difflib.get_close_matches(name, own, n=1, cutoff=0.75)
  if typo:
    return f"unknown flag --{name}; did you mean --{typo[0]}?"
  field = name.removeprefix("config.")
  match = field if field in known else fields.closest(field, known) if known else None
  if not match:
    return None
  value = next((a.split("=", 1)[1] for a in given if a.startswith(f"--{name}=")), "VALUE")
  return f"unknown flag --{name}; {how}, here {spell(match, value)}"


def one_line_flags_parser(
  program: str,
  module: str | None = None,
  doc: str | None = None,
  hint: Callable[[str, Sequence[str]], str | None] | None = None,
) -> Callable[[Sequence[str]], list[str]]:
  """An absl `app.run(..., flags_parser=)`: a bad flag is one line and exit 2, no usage dump;
  --help prints `doc` and the flags of `module` (bn_repro.cli.exit_with_help). `hint(message,
  argv)` may replace absl's message (a config field given as a flag of its own)."""

  def parse(argv: Sequence[str]) -> list[str]:
    from absl import flags

    if module:
      exit_with_help(argv, module, doc)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      message = first_line(e)
      sys.exit(report(program, (hint and hint(message, argv)) or plain_flag_error(message)))

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
