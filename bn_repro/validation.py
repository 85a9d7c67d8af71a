"""Config checks that run before anything is computed or written.

Each failure is a `UserError` naming the field and the fix; the CLI prints it as
one line and exits 2.
"""

import math
from collections.abc import Iterable
from typing import Any

import ml_collections
from absl import logging

from bn_repro import batch_norm, data, fields, models, parallel, placement
from bn_repro.errors import UserError
from bn_repro.models import common

SOURCES = ("tfds", "idx")
OPTIMIZERS = ("sgd",)
PROBE_NETWORKS = ("train", "inference", "both")  # config.probe_network


def _one_of(config: ml_collections.ConfigDict, field: str, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  value = _get(config, field)
  if value not in allowed:
    raise UserError(
      f"{value!r} is not one of {', '.join(map(repr, allowed))}; "
      f"set --config.{field} to one of them",
      field=f"config.{field}",
    )


def _positive(config: ml_collections.ConfigDict, field: str) -> None:
  value = _get(config, field)
  if not value > 0:
    raise UserError(
      f"must be > 0, got {value!r}; set --config.{field} to a positive value",
      field=f"config.{field}",
    )


def _non_negative(config: ml_collections.ConfigDict, field: str) -> None:
  value = _get(config, field)
  if value < 0:
    raise UserError(f"must be >= 0 (0 turns it off), got {value!r}", field=f"config.{field}")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  for part in field.split("."):
    config = config[part]
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values and ranges of every field the trainer reads."""
  _validate_finite(config)
  _validate_choices(config)
  placement.parse(config.get("cpu_cores", placement.AUTO))
  _validate_sizes(config)
  _validate_bn(config)
  _validate_evaluation(config)
  _validate_decay(config)
  if config.model.name == "mlp":
    _validate_mlp(config)
  elif config.model.name == "lstm":
    _validate_lstm(config)
  else:
    _validate_inception(config)


def _validate_finite(config: ml_collections.ConfigDict) -> None:
  """Every number of the config (and of its lists) is finite: 1e400 parses as inf."""
  for field, value in fields.flatten(config.to_dict()).items():
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      raise UserError(
        f"must be a finite number, got {value!r}; set --config.{field} to a finite value",
        field=f"config.{field}",
      )


def _validate_choices(config: ml_collections.ConfigDict) -> None:
  """The fields that name one of a fixed set: model, dtype, backend, data, optimizer, population."""
  _one_of(config, "model.name", models.NAMES)
  _one_of(config, "model.nonlinearity", common.NONLINEARITIES)
  _one_of(config, "dtype", common.DTYPES)
  _one_of(config, "parallel", parallel.BACKENDS)
  _one_of(config, "data.source", SOURCES)
  _one_of(config, "data.name", tuple(data.DATASETS) + data.STREAMED)
  if (
    config.data.name in data.STREAMED and config.model.use_bn and config.bn.population == "average"
  ):
    raise UserError(
      "Algorithm 2 recomputation needs a dataset held in memory; use "
      "bn.population=ema with a streamed dataset",
      field="config.bn.population",
    )
  _one_of(config, "optimizer.name", OPTIMIZERS)
  _one_of(config, "bn.population", batch_norm.POPULATION_MODES)
  _one_of(config, "probe_network", PROBE_NETWORKS)


MAX_SEED = 2**31 - 1


def _validate_sizes(config: ml_collections.ConfigDict) -> None:
  """Step counts, batch sizes, intervals and rates: positive, or >= 0 where 0 turns them off."""
  for field in (
    "optimizer.learning_rate",
    "num_steps",
    "batch_size",
    "eval_batch_size",
    "bn.epsilon",
    "model.num_classes",
    "model.init_std",
  ):
    _positive(config, field)
  for field in (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "num_devices",
    "optimizer.momentum",
    "max_loss",
    "profile_num_steps",
    "steps_per_call",
    "call_seconds",
  ):
    _non_negative(config, field)
  if not config.optimizer.momentum < 1:
    raise UserError(
      f"must be in [0, 1), got {config.optimizer.momentum!r}", field="config.optimizer.momentum"
    )
  if not 0 <= config.seed <= MAX_SEED:  # the programs take it as an int32
    raise UserError(f"must be in 0..{MAX_SEED}, got {config.seed!r}", field="config.seed")


def _validate_bn(config: ml_collections.ConfigDict) -> None:
  """config.bn: the population's decay and batches, and the variants when BN is on."""
  if not 0 < config.bn.decay < 1:
    raise UserError(
      f"must be in (0, 1), got {config.bn.decay!r}; it weights the old "
      "population value: running <- decay * running + (1 - decay) * batch",
      field="config.bn.decay",
    )
  if config.bn.decay < 0.5:
    logging.warning(
      "config.bn.decay=%s weights the new batch more than the running value; "
      "PyTorch's momentum=%s corresponds to decay=%s here",
      config.bn.decay,
      config.bn.decay,
      1 - config.bn.decay,
    )
  if config.model.use_bn and config.bn.population == "average":
    _positive(config, "bn.population_batches")
  if config.model.use_bn:
    _validate_bn_variants(config)


def _validate_evaluation(config: ml_collections.ConfigDict) -> None:
  """Train-set evaluation, the ICS probe and the target accuracy."""
  for field in ("eval_train_examples",):
    _non_negative(config, field)
  if config.data.name in data.STREAMED and (config.eval_train_examples or config.ics_probe):
    raise UserError(
      "train-set evaluation and the ICS probe need a dataset held in memory; "
      "turn them off for a streamed dataset",
      field="config.eval_train_examples" if config.eval_train_examples else "config.ics_probe",
    )
  if not 0 <= config.target_accuracy <= 1:
    raise UserError(
      f"must be in [0, 1] (0 = off), got {config.target_accuracy!r}", field="config.target_accuracy"
    )


def _validate_decay(config: ml_collections.ConfigDict) -> None:
  """Weight decay and the learning rate's staircase decay."""
  for field in ("optimizer.weight_decay", "optimizer.lr_decay_epochs"):
    _non_negative(config, field)
  _positive(config, "optimizer.lr_decay_rate")


def _validate_bn_variants(config: ml_collections.ConfigDict) -> None:
  """The BN variants' knobs (models.BN_VARIANT_FIELDS) and which of them combine."""
  bn = config.bn
  for field in ("virtual_batch_size", "renorm_dmax", "renorm_start", "noise_mean", "noise_std"):
    _non_negative(config, f"bn.{field}")
  for field, low in (("renorm_rmax", 1.0), ("noise_scale", 1.0), ("freeze_step", -1)):
    if bn[field] < low:
      raise UserError(
        f"must be >= {low} ({low} is plain BN), got {bn[field]!r}", field=f"config.bn.{field}"
      )
  if bn.renorm and min(bn.renorm_rmax_end, bn.renorm_dmax_end) < bn.renorm_start:
    raise UserError(
      f"renorm_rmax_end and renorm_dmax_end must be >= renorm_start "
      f"({bn.renorm_start}); got {bn.renorm_rmax_end}, {bn.renorm_dmax_end}",
      field="config.bn.renorm_start",
    )
  if bn.virtual_batch_size and bn.renorm:
    raise UserError(
      "ghost batches and Batch Renormalization do not combine here; set "
      "bn.virtual_batch_size=0 or bn.renorm=False",
      field="config.bn.renorm",
    )
  scheduled = [f for f, on in (("renorm", bn.renorm), ("freeze_step", bn.freeze_step >= 0)) if on]
  if scheduled and bn.population == "average":
    raise UserError(
      f"bn.{scheduled[0]} follows each layer's update count, which Algorithm 2's "
      "recomputation resets; use bn.population=ema with it",
      field="config.bn.population",
    )


def _validate_mlp(config: ml_collections.ConfigDict) -> None:
  from bn_repro.models import mlp

  _one_of(config, "model.bn_position", mlp.POSITIONS)
  if not 0 <= config.model.dropout_rate < 1:
    raise UserError(
      f"must be in [0, 1), got {config.model.dropout_rate!r}", field="config.model.dropout_rate"
    )
  hidden = tuple(config.model.hidden)
  if not hidden or min(hidden) <= 0:
    raise UserError(
      f"needs at least one layer and positive widths, got {hidden!r}", field="config.model.hidden"
    )
  if not 0 <= config.model.probe_unit < hidden[-1]:
    raise UserError(
      f"must index a unit of the last hidden layer (0..{hidden[-1] - 1}), "
      f"got {config.model.probe_unit}",
      field="config.model.probe_unit",
    )


def _validate_lstm(config: ml_collections.ConfigDict) -> None:
  from bn_repro.models import lstm

  _one_of(config, "model.sequence", lstm.SEQUENCES)
  _positive(config, "model.hidden")
  if config.ics_probe:
    raise UserError(
      "the ICS probe measures layers (one module per weight matrix), which the "
      "LSTM cell is not; set --config.ics_probe=False",
      field="config.ics_probe",
    )
  if config.model.use_bn:
    # The cell's per-time-step BN is plain BN: none of BatchNorm's variants.
    defaults = models.bn_variant_defaults()
    changed = [k for k, v in defaults.items() if config.bn.get(k, v) != v]
    if changed:
      raise UserError(
        f"the LSTM's per-time-step BN has no {changed[0]} option; set it to "
        f"{defaults[changed[0]]!r}",
        field=f"config.bn.{changed[0]}",
      )


def _validate_inception(config: ml_collections.ConfigDict) -> None:
  from bn_repro.models import conv, inception

  _one_of(config, "model.stem", ("imagenet", "small"))
  if "conv_impl" in config.model:
    _one_of(config, "model.conv_impl", conv.CONV_IMPLS)
  _positive(config, "model.width_multiplier")
  if not 0 <= config.model.dropout_rate < 1:
    raise UserError(
      f"must be in [0, 1), got {config.model.dropout_rate!r}", field="config.model.dropout_rate"
    )
  unknown = [m for m in config.model.modules if m not in inception.MODULE_NAMES]
  if unknown:
    raise UserError(
      f"unknown modules {unknown}; choose from {', '.join(inception.MODULE_NAMES)}",
      field="config.model.modules",
    )


def validate_devices(
  config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1
) -> None:
  """Checks that the global batch splits over the devices (of all processes) and BN has m > 1."""
  if num_processes > 1 and (config.num_devices or config.parallel != "pmap"):
    raise UserError(
      "a multi-process run uses every local device with pmap; set "
      "--config.num_devices=0 --config.parallel=pmap",
      field="config.num_devices",
    )
  num_devices *= num_processes
  if config.batch_size % num_devices:
    raise UserError(
      f"global batch {config.batch_size} does not split over {num_devices} devices; "
      f"use a multiple of {num_devices} or set --config.num_devices",
      field="config.batch_size",
    )
  per_device = config.batch_size // num_devices
  vbs = config.bn.virtual_batch_size if config.model.use_bn else 0
  if vbs and (per_device % vbs or vbs < 2):
    raise UserError(
      f"ghost batches of {vbs} must be >= 2 and divide each device's "
      f"{per_device} examples (global batch {config.batch_size} over "
      f"{num_devices} devices)",
      field="config.bn.virtual_batch_size",
    )
  if config.model.use_bn and not vbs:
    m = config.batch_size if config.bn.cross_device else per_device
    if m < 2:
      raise UserError(
        f"BN in training would compute each statistic from {m} value (variance 0, every "
        "output equal to beta); use a batch of at least 2 per statistic, or "
        "bn.cross_device=True",
        field="config.batch_size",
      )


def validate_data(config: ml_collections.ConfigDict, train_ds: Any, eval_ds: Any) -> None:
  """Checks the loaded data against the model and the batch."""
  for name, ds in (("train_split", train_ds), ("eval_split", eval_ds)):
    if len(ds) == 0:
      raise UserError("selects no examples; widen the split", field=f"config.data.{name}")
    if int(ds.labels.max()) >= config.model.num_classes:
      raise UserError(
        f"{name} has label {int(ds.labels.max())} but the model has "
        f"{config.model.num_classes} classes",
        field="config.model.num_classes",
      )
  data.check_batch_fits(len(train_ds), config.batch_size, config.data.train_split)
