"""A finished run directory opened for analysis: its config, metrics, data, restored state.

`open_run` reads a run written by `training.train_and_evaluate` (with or without BN),
restores a checkpoint through bn_repro.checkpoints and writes nothing into the run:

  run = runs.open_run("runs/bn")
  run.config, run.step, run.metrics(), run.trainer.evaluate(run.state)

For a BN run on in-memory data `run.trainer` is an `Estimator`, which also re-estimates
the population statistics with Algorithm 2 over any number of batches
(scripts/precise_bn.py, scripts/adabn.py); `save_run` writes re-estimated statistics as
a new run directory that `open_run` reads back. The scripts share their flags and their
bad-input convention (one line on stderr, exit code 2, as `bn-repro`) from here.
"""

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from bn_repro import checkpoints, data, fields, parallel, validation
from bn_repro.errors import EXIT_BAD_INPUT, UserError
from bn_repro.models import common
from bn_repro.rundir import RunDir
from bn_repro.training import POPULATION_SEED_OFFSET, Trainer, TrainState
from bn_repro.training import step as steps_lib


class Estimator(Trainer):
  """A Trainer whose BN layers average batch statistics exactly (Algorithm 2), over any N.

  Built with bn.population='average', so that each training-mode forward adds the
  batch's moments to an exact running mean, and with the chosen `unbiased`
  (m/(m-1) on each batch variance); weights and evaluation are the run's. Unlike
  `Trainer.recompute_population`, the number of batches is an argument and the
  state is not donated, so one restored state serves every N.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    train_ds: data.ArrayDataset,
    eval_ds: data.ArrayDataset,
    devs,
    *,
    unbiased: bool,
  ):
    config = config.copy_and_resolve_references()
    config.bn.population, config.bn.unbiased = "average", unbiased
    super().__init__(config, train_ds, eval_ds, devs)
    self.template = self.init_state()  # also tells evaluate() whether the model has a probe
    dtype = common.DTYPES[config.dtype]
    self._precise = parallel.data_parallel(
      lambda *a: steps_lib.recompute_population(*a, dtype=dtype), devs, backend=config.parallel
    )

  def precise_population(self, state: TrainState, num_batches: int) -> TrainState:
    """`state` (replicated) with Algorithm 2's statistics over `num_batches` training batches.

    The batches are the first `num_batches` of the stream Trainer.recompute_population
    draws from (so N = bn.population_batches repeats a run's own Algorithm 2); the
    weights are not touched.
    """
    idx = self.in_memory.indices(self.config.seed + POPULATION_SEED_OFFSET, 0, num_batches)
    return self._precise(state, *self.in_memory.dataset, idx)


@dataclasses.dataclass
class Run:
  """A run directory opened for analysis."""

  dir: RunDir
  config: ml_collections.ConfigDict  # as saved, with the overrides applied
  step: int  # of the restored checkpoint
  trainer: Trainer  # on the run's own data: an Estimator for a BN run held in memory
  state: TrainState  # restored, replicated over trainer.devs
  train_ds: data.ArrayDataset | None  # None for a streamed dataset
  eval_ds: data.ArrayDataset | None
  source: dict[str, Any] | None = None  # where save_run's statistics came from

  @property
  def workdir(self) -> str:
    return str(self.dir)

  def metrics(self) -> list[dict[str, Any]]:
    return self.dir.metrics()

  def evaluate(self) -> dict[str, float]:
    """The restored state's eval metrics on the run's eval set."""
    return self.trainer.evaluate(self.state)

  @property
  def stored_statistics(self) -> str:
    """What the restored batch_stats are: bn.population's, or those save_run was given."""
    if self.source is None:
      return self.config.bn.population
    return (
      f"Algorithm 2 over {self.source['batches']} batches"
      f"{', unbiased' if self.source['unbiased'] else ''}"
    )

  def require_population(self) -> Estimator:
    """The Estimator of a BN run on in-memory data; UserError naming why otherwise."""
    check_population(self.config, str(self.dir))
    assert isinstance(self.trainer, Estimator)
    return self.trainer

  def on_data(self, train_ds: data.ArrayDataset, eval_ds: data.ArrayDataset) -> Estimator:
    """An Estimator of the same model, devices and `unbiased` on other data (a shifted domain)."""
    estimator = self.require_population()
    return Estimator(
      self.config, train_ds, eval_ds, estimator.devs, unbiased=estimator.config.bn.unbiased
    )


def check_population(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a run whose population statistics cannot be re-estimated here."""
  if not config.model.use_bn:
    raise UserError(
      f"{workdir} was trained without BN (model.use_bn=False), so it has no "
      "population statistics; pass a run trained with BN",
      field="--workdir",
    )
  if config.data.name in data.STREAMED:
    raise UserError(
      f"{config.data.name} is streamed, and Algorithm 2 here needs a dataset "
      "held in memory; pass a run on MNIST or CIFAR-10",
      field="--workdir",
    )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json of a run directory."""
  return ml_collections.ConfigDict(RunDir(workdir).config())


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> None:
  """Sets dotted fields from strings: as given for a string field, else as a Python literal
  of the field's type (ints may set a float field, tuples a list field)."""
  for field, text in overrides.items():
    *parents, name = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise UserError(
        f"{field!r} is not a field of the run's {RunDir.CONFIG}; override "
        "one of its fields, e.g. data.idx_dir=DIR",
        field="--override",
      )
    old = node[name]
    try:
      node[name] = fields.parse_like(text, old)
    except ValueError:
      raise UserError(
        f"{field}={text!r} is not a {type(old).__name__} like the saved "
        f"{old!r}; give a value of that type",
        field="--override",
      ) from None


def restore(
  workdir: str,
  template: TrainState,
  config: ml_collections.ConfigDict,
  *,
  step: int | None = None,
  fallback: bool = False,
) -> tuple[int, TrainState]:
  """(step, state) of the newest checkpoint (or the one at `step`) of a run, read only."""
  run = RunDir(workdir)
  if not run.checkpoint_dir.is_dir():  # checked first: the manager would create it
    raise UserError(
      f"{workdir} has no {RunDir.CHECKPOINTS}/; train it first or pass a run that has checkpoints",
      field="--workdir",
    )
  mgr = checkpoints.manager(run)
  try:
    steps = sorted(mgr.all_steps())
    if not steps:
      raise UserError(
        f"{run.checkpoint_dir} holds no checkpoint; train the run first or pass one that "
        "has checkpoints",
        field="--workdir",
      )
    if step is not None and step not in steps:
      raise UserError(
        f"{run.checkpoint_dir} has no checkpoint at step {step}; choose one of {steps}",
        field="--step",
      )
    template_tree = checkpoints.to_checkpoint(template, config)
    found, restored = checkpoints.restore(mgr, template_tree, fallback, last=step)
  finally:
    mgr.close()
  return found, checkpoints.from_checkpoint(template, restored)


def open_run(
  workdir: str,
  *,
  step: int | None = None,
  overrides: Mapping[str, str] | None = None,
  unbiased: bool = False,
  fallback: bool = False,
) -> Run:
  """Opens a run (with or without BN) for analysis; nothing is written to it.

  Args:
    workdir: a run directory written by `training.train_and_evaluate` (or `save_run`).
    step: the checkpoint to restore (default: the newest).
    overrides: {dotted field: value string}, e.g. {"data.idx_dir": DIR} when the
      data has moved; applied to the saved config before the data is loaded.
    unbiased: the Estimator's Algorithm 2 with m/(m-1) on each batch variance.
    fallback: if the checkpoint cannot be restored, use the newest older one that can.
  """
  run_dir = RunDir(workdir)
  config = ml_collections.ConfigDict(run_dir.config())
  apply_overrides(config, overrides or {})
  try:
    validation.validate(config)
  except (AttributeError, KeyError) as e:
    raise UserError(
      f"{RunDir.CONFIG} lacks the field {e}, so an older bn_repro wrote "
      "it; add the field with --override or retrain",
      field="--workdir",
    ) from None
  devs = parallel.run_devices(config)
  validation.validate_devices(config, len(devs), jax.process_count())
  train_ds = eval_ds = None
  if config.data.name in data.STREAMED:
    trainer = Trainer(config, None, None, devs)
  else:
    train_ds, eval_ds = data.load_splits(config.data)
    validation.validate_data(config, train_ds, eval_ds)
    trainer = (
      Estimator(config, train_ds, eval_ds, devs, unbiased=unbiased)
      if config.model.use_bn
      else Trainer(config, train_ds, eval_ds, devs)
    )
  # An Estimator has its initial state already; init_state also tells evaluate() about a probe.
  template = trainer.template if isinstance(trainer, Estimator) else trainer.init_state()
  found, state = restore(workdir, template, config, step=step, fallback=fallback)
  return Run(
    run_dir,
    config,
    found,
    trainer,
    parallel.replicate(state, devs),
    train_ds,
    eval_ds,
    run_dir.source(),
  )


def check_new(workdir: str) -> None:
  """Refuses a run directory to be written that exists already."""
  if os.path.exists(workdir):
    raise UserError(f"{workdir} exists; choose another --out or delete it", field="--out")


def save_run(workdir: str, run: Run, state: TrainState, source: Mapping[str, Any]) -> None:
  """Writes `state` (replicated) as a new run directory that `open_run` reads.

  It holds the run's config.json, one checkpoint at the run's step and source.json
  (`source`: where the statistics came from).
  """
  check_new(workdir)
  out = RunDir(workdir)
  out.path.mkdir(parents=True)
  out.write_config(run.config.to_dict())
  out.write_source(source)
  mgr = checkpoints.manager(out)
  try:
    checkpoints.save(mgr, parallel.unreplicate(state), run.config)
    mgr.wait_until_finished()
  finally:
    mgr.close()


# ---------------------------------------------------------------------------
# The scripts' command line.


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose bad arguments raise UserError (one line) instead of printing usage."""

  def error(self, message: str):
    raise UserError(message)


def argument_parser(description: str) -> ArgumentParser:
  """The flags every population script takes: the run, the checkpoint, the output, Algorithm 2."""
  parser = ArgumentParser(description=description)
  parser.add_argument("--workdir", required=True, help="run directory written by bn-repro")
  parser.add_argument(
    "--out", help="output directory (default: <workdir>_<script name>); never inside the run"
  )
  parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  parser.add_argument(
    "--fallback_checkpoint",
    action="store_true",
    help="if the checkpoint cannot be restored, use the newest older one",
  )
  parser.add_argument(
    "--unbiased", action="store_true", help="Algorithm 2 with m/(m-1) on each batch variance"
  )
  parser.add_argument(
    "--override",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="set a field of the run's config.json, e.g. data.idx_dir=DIR",
  )
  return parser


def open_from_args(args: argparse.Namespace) -> Run:
  """`open_run` with the flags of `argument_parser`, for a run whose population statistics
  can be re-estimated (refused before its data is loaded otherwise)."""
  check_population(load_config(args.workdir), args.workdir)
  return open_run(
    args.workdir,
    step=args.step,
    overrides=fields.parse_assignments(args.override),
    unbiased=args.unbiased,
    fallback=args.fallback_checkpoint,
  )


def output_dir(out: str | None, workdir: str, name: str) -> str:
  """--out, or <workdir>_<name>; refused inside the run (which is never modified)."""
  out = out or os.path.normpath(workdir) + "_" + name
  run, target = os.path.realpath(workdir), os.path.realpath(out)
  if os.path.commonpath([run, target]) == run:
    raise UserError(
      f"{out} is inside the run {workdir}, which is never modified; choose another --out",
      field="--out",
    )
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"{out} exists and is not a directory; choose another --out", field="--out")
  return out


def positive_ints(text: str, flag: str) -> list[int]:
  """ "1,10,100" -> [1, 10, 100]: distinct positive counts, in the order given."""
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if not values or min(values) < 1 or len(set(values)) != len(values):
    raise UserError(
      f"{text!r} is not a list of distinct positive integers; give e.g. 1,10,100", field=flag
    )
  return values


def run_script(prog: str, body: Callable[[], None]) -> int:
  """Runs a script's body: 0, or for a UserError (or a file it cannot read or write) one
  line on stderr and EXIT_BAD_INPUT."""
  try:
    body()
  except UserError as e:
    message = str(e)
  except OSError as e:
    message = f"cannot use {e.filename} ({e.strerror}); check the path or choose another --out"
  else:
    return 0
  print(f"{prog}: error: " + message.replace("\n", " "), file=sys.stderr)
  return EXIT_BAD_INPUT
