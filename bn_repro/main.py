"""Command line: `bn-repro --config=configs/mnist_mlp.py:bn_sigmoid --workdir=runs/x`.

Fields are overridden with `--config.<field>=<value>`. Exit codes: 0 done,
2 bad input (one line on stderr), 3 the run diverged (recorded in the workdir),
4 stopped by SIGTERM/SIGINT after saving a checkpoint (rerun to resume).
"""

import logging as pylogging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bn_repro.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_STOPPED

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist_mlp.py:bn_sigmoid.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
_FALLBACK = flags.DEFINE_bool(
    "fallback_checkpoint", False,
    "If the newest checkpoint cannot be restored, resume from the newest one that can.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume even if the workdir's saved config differs.")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])!r}; fields are set as --config.<field>=<value>")
  from bn_repro import train  # pylint: disable=g-import-not-at-top
  from bn_repro.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             fallback_checkpoint=_FALLBACK.value,
                             allow_config_change=_ALLOW_CHANGE.value)
  except UserError as e:
    _fail(str(e))
  except train.Stopped as e:
    print(f"bn-repro: stopped by signal {e.signum} at step {e.step} after saving a checkpoint; "
          "rerun the same command to resume", file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  except train.Diverged as e:
    print(f"bn-repro: the run diverged at step {e.step}; status recorded in "
          f"{_WORKDIR.value}/status.json", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)


def _fail(message: str) -> None:
  print(f"bn-repro: error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _parse_flags(argv):
  """absl's parser, with a bad flag or config override as one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    key = str(e).strip("\"'")
    given = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
    _fail(f"unknown config field {key!r}" + (f" in {given[0]}" if given else "") +
          "; the fields are those of the config file (see its get_config and the README)")
  except Exception as e:  # a config file's get_config() rejecting its variant
    _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


class _OwnLinesOnly(pylogging.Filter):
  """bn_repro's log lines; libraries (orbax logs every save, tfds warns about empty dirs)
  only from ERROR up."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.ERROR or f"{os.sep}bn_repro{os.sep}" in record.pathname


def run():
  """Console-script entry point."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnLinesOnly())
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
