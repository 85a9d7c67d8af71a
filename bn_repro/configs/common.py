"""The base every experiment config starts from, and the presets a config's argument may name.

Plain data (ml_collections only): loading a config imports no JAX. An experiment config
starts from `get_config()` (trainer, BN, data and optimizer fields), fills `model`, and
overrides the fields it is about. Its argument is parsed by `parse`: comma-separated
choices in any order, one per group (the config's own, e.g. its variant, and `preset`):
  tfds  data from a prepared tfds dataset (data.source=tfds; the configs' default).
  t10k  MNIST's 10,000-image test set read from IDX files: data.source=idx, the first
        8,000 images train (data.train_split='test[:8000]'), the last 2,000 evaluate
        (data.eval_split='test[8000:]'), data.idx_dir from $BN_REPRO_MNIST_DIR ('' when
        it is unset; the run then stops, naming both ways to set it).
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from bn_repro.sweeps import grid as sw

MNIST_DIR_ENV = "BN_REPRO_MNIST_DIR"  # the t10k preset's data.idx_dir

# bn_repro.BatchNorm's variant options and its defaults for them (tests/test_configs.py
# checks them against the module): ghost batches, Batch Renormalization, noisy BN, frozen
# statistics.
BN_VARIANTS = dict(
  virtual_batch_size=0,  # > 0: ghost batches of this many examples of each device's share
  renorm=False,  # Batch Renormalization: limits on r and d rise from (1, 0) to (rmax, dmax),
  renorm_rmax=3.0,  # starting at update renorm_start and reaching them at updates
  renorm_dmax=5.0,  # renorm_rmax_end and renorm_dmax_end
  renorm_start=5_000,
  renorm_rmax_end=40_000,
  renorm_dmax_end=25_000,
  noise_mean=0.0,  # noisy BN (needs a 'noise' rng); 0 / 1 / 0 = none
  noise_scale=1.0,
  noise_std=0.0,
  freeze_step=-1,  # >= 0: from this many updates on, normalize with the population (-1: never)
)

PRESET = "preset"  # the group of the data presets in `parse`'s result
DATA_PRESETS = ("tfds", "t10k")


def get_config() -> ml_collections.ConfigDict:
  """The shared defaults; `model` is empty (each experiment sets its own fields)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict()

  c.bn = ml_collections.ConfigDict()
  c.bn.epsilon = 1e-5
  c.bn.decay = 0.99  # EMA: running <- decay * running + (1 - decay) * batch
  c.bn.population = "ema"  # or "average": Algorithm 2 recomputed before each eval
  c.bn.population_batches = 100  # training batches Algorithm 2 averages over
  c.bn.unbiased = False  # m/(m-1) on batch variances entering the population
  c.bn.cross_device = True  # batch statistics over the global batch (all devices)
  c.bn.update(BN_VARIANTS)

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"
  c.data.source = "tfds"  # or "idx": files in data.idx_dir
  c.data.tfds_data_dir = ""  # '' = tfds default (~/tensorflow_datasets)
  c.data.idx_dir = ""
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.binarize = False  # pixels >= 128 become 1, the others 0 (else pixel / 255)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0  # L2 on kernels: adds weight_decay * w to the gradient
  c.optimizer.lr_decay_rate = 1.0  # learning rate *= lr_decay_rate every lr_decay_epochs
  c.optimizer.lr_decay_epochs = 0.0  # 0 = constant learning rate

  c.batch_size = 128  # global, split over devices
  c.eval_batch_size = 1000  # global
  c.num_steps = 10_000
  c.log_every = 100
  c.steps_per_call = 0  # > 0: at most this many steps per device call (0: up to the next log/eval)
  # > 0: device calls of about this many seconds at most (measured), so that a SIGTERM is
  # acted on within about that long; 0: calls as long as the chunks between log/eval points
  c.call_seconds = 10.0
  c.eval_every = 1_000
  c.checkpoint_every = 1_000
  c.target_accuracy = 0.0  # > 0: record the first step whose eval accuracy reaches it
  c.max_loss = 0.0  # > 0: a train loss above it counts as divergence, like NaN/Inf
  c.eval_train_examples = 0  # > 0: also evaluate on this many training examples (train_eval/*)
  # Figure 1(b, c)'s probe at each eval: "train" (BN with batch statistics, on fixed training
  # batches), "inference" (population statistics, on the eval set: probe_inference/*), "both"
  c.probe_network = "train"
  c.ics_probe = False  # at each eval: internal covariate shift per layer (bn_repro/analysis.py)
  c.dtype = "float32"  # compute dtype: float32 or bfloat16 (params, BN statistics float32)
  c.num_devices = 0  # 0 = all local devices
  c.cpu_cores = "auto"  # CPU placement (bn_repro/placement.py): auto, all, or ids like "0,1"
  # JAX's persistent compilation cache (bn_repro/compile_cache.py): auto, off, or a directory
  c.compilation_cache = "auto"
  c.parallel = "pmap"  # or "shard_map": jax.jit + jax.shard_map over a device mesh
  c.tensorboard = True
  c.profile_start_step = -1  # >= 0: jax.profiler trace into <workdir>/profile from this step
  c.profile_num_steps = 0
  return c


def data_preset(name: str) -> dict[str, str]:
  """The data fields preset `name` (one of DATA_PRESETS) sets."""
  if name == "tfds":
    return dict(source="tfds")
  if name == "t10k":
    return dict(
      source="idx",
      idx_dir=os.environ.get(MNIST_DIR_ENV, ""),
      train_split="test[:8000]",
      eval_split="test[8000:]",
    )
  raise ValueError(f"unknown data preset {name!r}; choose one of {', '.join(DATA_PRESETS)}")


def parse(
  arg: str | None,
  where: str,
  groups: Mapping[str, Sequence[str]],
  defaults: Mapping[str, str] | None = None,
  required: Sequence[str] = (),
) -> dict[str, Any]:  # str values; None for a group not given
  """A config's argument 'bn_sigmoid,t10k' -> {'variant': 'bn_sigmoid', 'preset': 't10k'}.

  Args:
    arg: comma-separated choices in any order, at most one of each group; None or '' for
      the defaults.
    where: the file, for messages ("mnist_mlp.py").
    groups: group name -> its choices. The data presets join as group PRESET (default
      None: the config's own data).
    defaults: group -> its default choice (else the group's first choice).
    required: groups that `arg` must name (no default).

  Raises:
    ValueError, one line naming the choices: an unknown choice, two of one group, or a
    required group missing.
  """
  choices = {**groups, PRESET: DATA_PRESETS}
  menu = "; ".join(f"{g}: {', '.join(c)}" for g, c in choices.items())
  kinds = " or ".join([", ".join(list(choices)[:-1]), PRESET])
  picked: dict[str, str] = {}
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    group = next((g for g, c in choices.items() if token in c), None)
    if group is None:
      raise ValueError(f"unknown {kinds} {token!r} in {arg!r} of {where}; choose from {menu}")
    if group in picked:
      raise ValueError(
        f"{arg!r} of {where} names two of {group}, {picked[group]!r} and {token!r}; "
        f"choose one of {', '.join(choices[group])}"
      )
    picked[group] = token
  for group in required:
    if group not in picked:
      raise ValueError(f"{arg!r} of {where} names no {group}; choose one of {menu}")
  defaults = {g: c[0] for g, c in groups.items() if g not in required} | dict(defaults or {})
  return {g: picked.get(g, defaults.get(g)) for g in choices}


def apply_preset(
  c: ml_collections.ConfigDict, preset: str | None, where: str
) -> ml_collections.ConfigDict:
  """`c` with the data fields of `preset` (None: unchanged)."""
  if preset is None:
    return c
  if preset == "t10k" and c.data.name != "mnist":
    raise ValueError(
      f"preset t10k reads MNIST's IDX files, but {where} here trains on {c.data.name}"
    )
  c.data.update(data_preset(preset))
  return c


def with_preset(spec: str, preset: str | None) -> str:
  """A config spec with `preset` added: ('mnist_mlp.py:bn_sigmoid', 't10k') ->
  'mnist_mlp.py:bn_sigmoid,t10k'; a bare variant ('bn_x5') gets ',t10k' too."""
  if preset is None:
    return spec
  return f"{spec}:{preset}" if spec.endswith(".py") else f"{spec},{preset}"


def sweep_with_preset(sweep: Any, preset: str | None) -> Any:
  """A bn_repro.sweeps.grid.Sweep whose base and points' configs all take `preset`."""
  if preset is None:
    return sweep

  grid = [
    {k: with_preset(str(v), preset) if k == sw.CONFIG_KEY else v for k, v in point.items()}
    for point in sweep.grid
  ]
  return dataclasses.replace(sweep, base=with_preset(sweep.base, preset), grid=grid)
