"""Command line: `bn-repro --config=mnist_mlp:bn_sigmoid,t10k --workdir=runs/x`.

`--config` takes a config file or a packaged config's name, then ':' and its argument
(bn_repro.configs.resolve_path). Fields are overridden with `--config.<field>=<value>`.
Exit codes: 0 done, 2 bad input (one line on stderr), 3 the run diverged (recorded in the
workdir), 4 stopped by SIGTERM/SIGINT after saving a checkpoint (rerun to resume).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bn_repro import cli, configs, fields
from bn_repro.errors import EXIT_DIVERGED, EXIT_STOPPED, UserError

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file or packaged config and its argument, e.g. mnist_mlp:bn_sigmoid,t10k.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the resolved config."
)
_FALLBACK = flags.DEFINE_bool(
  "fallback_checkpoint",
  False,
  "If the newest checkpoint cannot be restored, resume from the newest one that can.",
)
_ALLOW_CHANGE = flags.DEFINE_bool(
  "allow_config_change", False, "Resume even if the workdir's saved config differs."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  "",
  "host:port of process 0 for a multi-process run (with --num_processes, --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() with what the cluster provides (SLURM, a TPU pod slice).",
)
_SEEDS = flags.DEFINE_integer(
  "seeds",
  1,
  "N > 1: seeds config.seed .. config.seed + N - 1 trained as one batched program, each "
  "run in <workdir>/seed<seed>.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _init_distributed() -> None:
  """Joins a multi-process run before JAX touches a device (all processes run the same command)."""
  if not (_COORDINATOR.value or _DISTRIBUTED.value):
    return
  import jax

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
    return
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    _fail(f"--process_id={_PROCESS_ID.value} must be in 0..{_NUM_PROCESSES.value - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs
  jax.distributed.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )


def _main(argv):
  if len(argv) > 1:
    _fail(
      f"unexpected arguments {' '.join(argv[1:])!r}; fields are set as --config.<field>=<value>"
    )
  _init_distributed()
  from bn_repro import training
  from bn_repro.rundir import RunDir

  if _SEEDS.value < 1:
    _fail(f"--seeds={_SEEDS.value}: must be at least 1")
  try:
    if _SEEDS.value > 1:
      _train_seeds(training)
      return
    training.train_and_evaluate(
      _CONFIG.value,
      _WORKDIR.value,
      fallback_checkpoint=_FALLBACK.value,
      allow_config_change=_ALLOW_CHANGE.value,
    )
  except UserError as e:
    _fail(str(e))
  except training.Stopped as e:
    print(
      f"bn-repro: stopped by signal {e.signum} at step {e.step} after saving a checkpoint; "
      "rerun the same command to resume",
      file=sys.stderr,
    )
    sys.exit(EXIT_STOPPED)
  except training.Diverged as e:
    print(
      f"bn-repro: the run diverged at step {e.step}; status recorded in "
      f"{RunDir(_WORKDIR.value).status_path}",
      file=sys.stderr,
    )
    sys.exit(EXIT_DIVERGED)


def _train_seeds(training) -> None:
  """--seeds=N: the N seeds in one batched program (training.train_batched); exit 3 if any
  diverged."""
  import copy
  import os

  runs = []
  for k in range(_SEEDS.value):
    c = copy.deepcopy(_CONFIG.value)
    c.seed = _CONFIG.value.seed + k
    runs.append(c)
  workdirs = [os.path.join(str(_WORKDIR.value), f"seed{c.seed}") for c in runs]
  statuses = training.train_batched(runs, workdirs, spread=False)
  diverged = [w for w, s in zip(workdirs, statuses) if s == "diverged"]
  if diverged:
    print(f"bn-repro: diverged: {', '.join(diverged)}", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)


def _fail(message: str) -> None:
  sys.exit(cli.report("bn-repro", message))


def _resolve_config(argv: list[str]) -> list[str]:
  """`argv` with --config's file resolved (bn_repro.configs.resolve_path): a path, or the
  packaged file a name like mnist_mlp names; one line and exit 2 when it is neither
  (ml_collections would defer this to a traceback)."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      try:
        arg = "--config=" + configs.resolve_path(arg.split("=", 1)[1])
      except ValueError as e:
        _fail(f"{arg}: {e}")
    out.append(arg)
  return out


def _parse_flags(argv):
  """absl's parser, with a bad flag or config override as one line and exit 2."""
  cli.exit_with_help(argv, __name__, __doc__, CONFIG_FIELDS_HELP)
  given = list(argv)
  argv = _resolve_config(given)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    # A config file's own error comes wrapped in ml_collections' traceback text: keep the
    # flag and the error, drop the traceback.
    message = (
      lines[0]
      if len(lines) == 1 or "Traceback" not in str(e)
      else f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    )
    for resolved, arg in zip(argv, given):  # the --config value as the user wrote it
      message = message.replace(resolved, arg)
    _fail(_unknown_flag_hint(message, given) or cli.plain_flag_error(message))
  except (AttributeError, KeyError):  # an override of a field the config does not have
    _fail(_unknown_field(given))
  except Exception as e:  # a config file's get_config() rejecting its variant
    _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


CONFIG_FIELDS_HELP = (
  "Any field of the config is set with --config.<field>=<value>, e.g. "
  "--config.num_steps=1000 --config.optimizer.learning_rate=0.1; "
  "bn_repro/configs/common.py lists every field with its default."
)


def _config_fields(given: list[str]) -> dict | None:
  """The dotted fields of the config `--config` names, or None when it does not load."""
  spec = next((a.split("=", 1)[1] for a in given if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    return fields.flatten(configs.get(spec).to_dict())
  except Exception:  # the parser's own message says what is wrong with it
    return None


def _unknown_field(given: list[str]) -> str:
  """The message for a --config.<field> override of a field the config does not have."""
  spec = next((a.split("=", 1)[1] for a in given if a.startswith("--config=")), "")
  try:
    known = fields.flatten(configs.get(spec).to_dict())
  except UserError as e:  # a sweep file, or a file without get_config
    return f"--config={spec}: {e}"
  for arg in given:
    name = arg.split("=", 1)[0].removeprefix("--config.")
    if arg.startswith("--config.") and name not in known:
      match = fields.closest(name, list(known))
      hint = f"; did you mean --config.{match}?" if match else ""
      return f"unknown config field {name!r} in {arg.split('=', 1)[0]}{hint} (see the config file)"
  return f"--config={spec}: an override names a field the config does not have"


def _unknown_flag_hint(message: str, given: list[str]) -> str | None:
  """For `--num_steps=100`: the config field it should have been, or None."""
  return cli.config_flag_hint(
    message,
    given,
    list(_config_fields(given) or {}),
    "config fields are set as --config.<field>",
    lambda field, value: f"--config.{field}={value}",
    __name__,
  )


def run():
  """Console-script entry point."""
  logging.set_verbosity(logging.INFO)
  cli.own_absl_lines_only()
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
