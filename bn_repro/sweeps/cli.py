r"""The sweep runner's command line: `python -m bn_repro.sweeps` or `bn-repro-sweep`.

  bn-repro-sweep --sweep=mnist_sweeps:lr_grid --workdir=runs/lr \
      [--parallel=N] [--override=FIELD=VALUE ...] [--point=NAME ...] [--print_commands] \
      [--batched [--max_batched_runs=N] [--cpu_devices=N]]

`main` checks the flags, loads and resolves the sweep (bn_repro.sweeps.resolve), then
prints the commands, trains a batched group in this process (`--in_process`, the child a
--batched job runs), or writes the sweep's record and runs its points
(bn_repro.sweeps.runner). Bad input is one line on stderr and exit code 2, before
anything is written.
"""

import datetime
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from absl import app, flags

from bn_repro import cli, fields, parallel, training
from bn_repro.errors import EXIT_STOPPED, UserError
from bn_repro.rundir import SweepDir, read_json
from bn_repro.storage import is_local
from bn_repro.sweeps import grid, resolve, slurm
from bn_repro.sweeps.runner import Runner, batch_groups

PROGRAM = "bn-repro sweep"  # the prefix of its error lines
MODULE = "bn_repro.sweeps"  # `python -m MODULE` runs `run()`

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file and name, e.g. mnist_sweeps:lr_grid.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, f"Sweep directory: {SweepDir.RECORD} and one subdirectory per point."
)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once, each in its own process.")
_OVERRIDE = flags.DEFINE_multi_string(
  "override",
  [],
  "FIELD=VALUE set in every point, as the trainer's --config.FIELD=VALUE "
  "(e.g. data.source=idx, num_steps=1000). Repeatable.",
)
_POINT = flags.DEFINE_multi_string("point", [], "Run only this point (its name). Repeatable.")
_PRINT_COMMANDS = flags.DEFINE_bool(
  "print_commands",
  False,
  "Print one command per point (with --batched: per group) and exit; writes nothing.",
)
_BATCHED = flags.DEFINE_bool(
  "batched",
  False,
  "Points that differ only in seed and learning rate train together: one "
  "process and one compiled program per group (bn_repro.batched); the "
  "others run as before.",
)
_MAX_BATCHED_RUNS = flags.DEFINE_integer(
  "max_batched_runs",
  0,
  "With --batched: at most this many points in one group (0: no limit); "
  "a larger group is split evenly. With fewer groups than --parallel, "
  "the largest are split further (2 points a part at least).",
)
_IN_PROCESS = flags.DEFINE_bool(
  "in_process",
  False,
  "Train the selected points in this process as one batched program (what "
  "--batched starts for each group); they must differ only in seed and "
  "learning rate.",
)
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices",
  0,
  "With --batched on a CPU host: JAX CPU devices each group's runs "
  "spread over (0: the usable CPUs / --parallel). No effect on GPU or "
  "TPU, nor where XLA_FLAGS sets a device count.",
)
_LAUNCHER = flags.DEFINE_enum(
  "launcher",
  "local",
  ["local", "slurm"],
  "local: child processes on this machine; slurm: one SLURM job array through submitit, "
  "a task a point (bn_repro.sweeps.slurm).",
)
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", "", "With --launcher=slurm: partition.")
_SLURM_TIME = flags.DEFINE_integer(
  "slurm_time_min", 60, "With --launcher=slurm: time limit of each point's task, in minutes."
)
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_point", 0, "With --launcher=slurm: GPUs a task.")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_point", 1, "With --launcher=slurm: CPUs a task.")
_SLURM_ARRAY = flags.DEFINE_integer(
  "slurm_array_parallelism", 0, "With --launcher=slurm: tasks running at once (0: no limit)."
)
_SLURM_WAIT = flags.DEFINE_bool(
  "slurm_wait", True, "With --launcher=slurm: follow the jobs to the end (else exit on submission)."
)
_SLURM_CLUSTER = flags.DEFINE_enum(
  "slurm_cluster",
  "slurm",
  ["slurm", "local"],
  "With --launcher=slurm: submitit's cluster; local runs the array's tasks as processes here.",
)
flags.mark_flags_as_required(["sweep", "workdir"])


def runner_argv(spec: str, workdir: str, cli_overrides: Mapping[str, str]) -> list[str]:
  """This runner's command for the sweep, before the flags that pick points or how they run."""
  return [sys.executable, "-m", MODULE, f"--sweep={spec}", f"--workdir={workdir}"] + [
    f"--override={k}={v}" for k, v in cli_overrides.items()
  ]


def _check_flags() -> None:
  if _PARALLEL.value < 1:
    raise UserError("must be >= 1", field="--parallel")
  if _MAX_BATCHED_RUNS.value < 0:
    raise UserError("must be >= 0 (0: no limit)", field="--max_batched_runs")
  if _CPU_DEVICES.value < 0:
    raise UserError("must be >= 0 (0: one per usable CPU)", field="--cpu_devices")
  if _CPU_DEVICES.value and not (_BATCHED.value or _IN_PROCESS.value):
    raise UserError("applies to --batched runs only; add --batched", field="--cpu_devices")
  if _MAX_BATCHED_RUNS.value and not _BATCHED.value:
    raise UserError("applies to --batched runs only; add --batched", field="--max_batched_runs")
  for flag in (_SLURM_TIME, _SLURM_CPUS):
    if flag.value < 1:
      raise UserError("must be >= 1", field=f"--{flag.name}")
  for flag in (_SLURM_GPUS, _SLURM_ARRAY):
    if flag.value < 0:
      raise UserError("must be >= 0", field=f"--{flag.name}")
  if _LAUNCHER.value == "slurm" and (_PARALLEL.value > 1 or _BATCHED.value):
    raise UserError(
      "--launcher=slurm runs a task a point; use --slurm_array_parallelism instead",
      field="--parallel" if _PARALLEL.value > 1 else "--batched",
    )


def _select(points: Sequence[resolve.ResolvedPoint], spec: str) -> list[int]:
  """The indices of the --point names (every point without one); UserError for a name
  that is not a point's."""
  names = [p.name for p in points]
  for name in _POINT.value:
    if name not in names:
      raise UserError(
        f"no point {name!r} in {spec}; points: {', '.join(names[:5])}"
        f"{', ...' if len(names) > 5 else ''}",
        field="--point",
      )
  wanted = set(_POINT.value)
  return [i for i, p in enumerate(points) if not wanted or p.name in wanted]


def _check_workdir(workdir: str, spec: str) -> None:
  """The workdir is a local (or shared) directory, new or holding this same sweep."""
  if not is_local(workdir):
    raise UserError(
      f"{workdir} is on object storage, where a sweep's job logs and locks cannot live; "
      "use a local or shared directory (each run may still set a gs:// data directory)",
      field="--workdir",
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"{workdir} exists and is not a directory", field="--workdir")
  path = SweepDir(workdir).record_path
  if not path.exists():
    return
  try:
    previous = read_json(path)["sweep"]
  except (UserError, KeyError, TypeError):
    raise UserError(f"{path} is unreadable; use a new --workdir", field="--workdir") from None
  key = lambda s: (os.path.basename(s.partition(":")[0]), s.partition(":")[2])
  if key(previous) != key(spec):
    raise UserError(
      f"{workdir} holds the sweep {previous}, not {spec}; use a new --workdir", field="--workdir"
    )


def _how() -> list[str]:
  """The flags that choose how points run, for printed commands and the sweep's record."""
  if not _BATCHED.value:
    return []
  return (
    ["--batched"]
    + ([f"--max_batched_runs={_MAX_BATCHED_RUNS.value}"] if _MAX_BATCHED_RUNS.value else [])
    + ([f"--cpu_devices={_CPU_DEVICES.value}"] if _CPU_DEVICES.value else [])
  )


def _print_commands(
  points: Sequence[resolve.ResolvedPoint],
  selected: Sequence[int],
  command: Sequence[str],
  cwd: str,
) -> int:
  """One command a point (with --batched: a group), each runnable from anywhere."""
  groups = (
    batch_groups(points, selected, _MAX_BATCHED_RUNS.value, _PARALLEL.value)
    if _BATCHED.value
    else [[i] for i in selected]
  )
  try:
    for group in groups:
      argv = [*command, *(f"--point={points[i].name}" for i in group)]
      print(f"cd {shlex.quote(cwd)} && {shlex.join(argv)}")
    sys.stdout.flush()
  except BrokenPipeError:  # `| head`
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0


def train_in_process(points: Sequence[resolve.ResolvedPoint], cpu_devices: int) -> int:
  """Trains `points` here as one batched program (a --batched group's child), its runs
  spread over `cpu_devices` CPU devices (0: one per usable CPU) on a CPU host: exit 0
  when each is done or diverged (its status says which), 4 when stopped."""
  parallel.add_cpu_devices(cpu_devices)
  cli.own_absl_lines_only()  # as in a single run's log (bn_repro.main)
  try:
    training.train_batched(
      [resolve.parse_config(p.config, p.overrides) for p in points], [p.workdir for p in points]
    )
  except UserError as e:
    return cli.report(PROGRAM, str(e))
  except training.Stopped as e:
    print(
      f"{PROGRAM}: stopped by signal {e.signum} at step {e.step} after saving "
      "checkpoints; rerun to resume",
      file=sys.stderr,
    )
    return EXIT_STOPPED
  return 0


def _run_sweep(
  spec: str,
  sweep: grid.Sweep,
  points: Sequence[resolve.ResolvedPoint],
  selected: Sequence[int],
  overrides: Mapping[str, str],
  command: Sequence[str],
  cwd: str,
) -> int:
  """Writes the sweep's record and each selected point's pending status; runs them."""
  workdir = _WORKDIR.value or ""
  SweepDir(workdir).write_record(resolve.sweep_record(spec, sweep, command, overrides, points, cwd))
  for i in selected:  # pending until started
    run = points[i].run_dir
    if not run.status_path.exists():
      run.create()
      run.write_config(points[i].resolved)
      run.write_status("pending")
  sweep_dir = SweepDir(workdir)

  def out(line: str) -> None:
    print(line, flush=True)
    sweep_dir.log(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}")

  if _LAUNCHER.value == "slurm":
    options = slurm.Options(
      partition=_SLURM_PARTITION.value,
      time_min=_SLURM_TIME.value,
      gpus_per_point=_SLURM_GPUS.value,
      cpus_per_point=_SLURM_CPUS.value,
      array_parallelism=_SLURM_ARRAY.value,
      cluster=_SLURM_CLUSTER.value,
    )
    try:
      return slurm.submit(
        points, selected, command, cwd, sweep_dir, options, out, wait=_SLURM_WAIT.value
      )
    except UserError as e:
      return cli.report(PROGRAM, str(e))
  runner = Runner(
    points,
    _PARALLEL.value,
    cwd,
    out=out,
    batch_command=runner_argv(spec, workdir, overrides) if _BATCHED.value else None,
    max_batched_runs=_MAX_BATCHED_RUNS.value,
    cpu_devices=_CPU_DEVICES.value,
  )
  return runner.run(selected)


def main(argv: Sequence[str]) -> int:
  """The runner on the parsed flags; returns the exit code."""
  if len(argv) > 1:
    return cli.report(
      PROGRAM,
      f"unexpected arguments {' '.join(argv[1:])!r}; fields are set with --override=FIELD=VALUE",
    )
  spec, workdir, cwd = _SWEEP.value or "", _WORKDIR.value or "", os.getcwd()  # required flags
  try:
    _check_flags()
    overrides = fields.parse_assignments(_OVERRIDE.value, flag="--override")
    sweep, sweep_dir = resolve.load_sweep(spec)
    points = resolve.resolve(sweep, sweep_dir, workdir, overrides, cwd=cwd, label=spec)
    selected = _select(points, spec)
    _check_workdir(workdir, spec)
  except UserError as e:
    return cli.report(PROGRAM, str(e))
  command = runner_argv(spec, workdir, overrides) + _how()
  if _PRINT_COMMANDS.value:
    return _print_commands(points, selected, command, cwd)
  if _IN_PROCESS.value:
    return train_in_process([points[i] for i in selected], _CPU_DEVICES.value)
  return _run_sweep(spec, sweep, points, selected, overrides, command, cwd)


def _sweep_fields(argv: Sequence[str]) -> list[str]:
  """The dotted fields of the base config of the sweep `--sweep` names (of the common base
  config if it does not load)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--sweep=")), "")
  try:
    sweep, sweep_dir = resolve.load_sweep(spec)
    config = resolve.parse_config(resolve.config_arg(sweep.base, sweep_dir, os.getcwd()), {})
  except Exception:  # the runner's own checks say what is wrong with the sweep
    from bn_repro.configs import common

    config = common.get_config()
  return list(fields.flatten(config.to_dict()))


def _override_hint(message: str, argv: Sequence[str]) -> str | None:
  """For `--num_steps=100` or `--config.num_steps=100`: the --override it should have been."""
  return cli.config_flag_hint(
    message,
    argv,
    _sweep_fields(argv),
    "a sweep sets config fields with --override=FIELD=VALUE",
    lambda field, value: f"--override={field}={value}",
    __name__,
  )


def run() -> None:
  """Console entry point (bn-repro-sweep)."""
  app.run(
    lambda argv: sys.exit(main(argv)),
    flags_parser=cli.one_line_flags_parser(PROGRAM, __name__, __doc__, hint=_override_hint),
  )
