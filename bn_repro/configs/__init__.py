"""The experiment configs and sweep files, and how a `--config` or `--sweep` value finds them.

A spec is FILE[:ARG], as `--config` and `--sweep` take it. FILE is a path, or when no such
file exists, a packaged file named with or without `.py`, also as `configs/<name>.py`:
"mnist_mlp", "mnist_mlp.py" and "configs/mnist_mlp.py" all name bn_repro/configs/mnist_mlp.py.
ARG goes to the file's get_config(ARG) (get_sweep(ARG)): comma-separated choices such as a
variant and a data preset (bn_repro/configs/common.py), e.g. "mnist_mlp:bn_sigmoid,t10k".

  from bn_repro import configs
  c = configs.get("mnist_mlp:bn_sigmoid,t10k")  # the ConfigDict `--config=` would give

Loading a config imports no JAX.
"""

import os
import re
import runpy

import ml_collections

from bn_repro.errors import UserError

DIR = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("mnist_mlp", "seq_mnist", "inception_small", "inception_imagenet")
SWEEPS = ("mnist_sweeps", "ablation_sweeps", "inception_sweeps")
_KINDS = {"config": CONFIGS, "sweep": SWEEPS}


def resolve_path(spec: str, kind: str = "config", root: str | None = None) -> str:
  """FILE[:ARG] -> PATH[:ARG], PATH an existing file.

  FILE as given when it is a file (relative paths under `root`, default the working
  directory), else the packaged config (`kind` "config") or sweep file (`kind` "sweep") it
  names: "mnist_mlp", "mnist_mlp.py", "configs/mnist_mlp.py". Raises UserError, one line
  naming the packaged files, when it is neither.
  """
  file, sep, arg = spec.partition(":")
  path = os.path.join(root, file) if root else file
  if os.path.isfile(path):
    return path + sep + arg
  names = _KINDS[kind]
  folder, name = os.path.split(os.path.normpath(file))
  name = name.removesuffix(".py")
  if name in names and (not folder or os.path.basename(folder) == "configs"):
    return os.path.join(DIR, name + ".py") + sep + arg
  other = "sweep" if kind == "config" else "config"
  if name in _KINDS[other] and (not folder or os.path.basename(folder) == "configs"):
    raise UserError(wrong_kind(name, other))
  raise UserError(
    f"there is no file {path!r}, nor a packaged {kind} by that name; the packaged {kind}s are "
    f"{', '.join(names)}"
  )


def wrong_kind(name: str, kind: str) -> str:
  """The message for a `kind` file ("config" or "sweep") `name` given where the other is."""
  if kind == "sweep":
    return (
      f"{name} is a sweep file, not a config; run it with "
      f"bn-repro-sweep --sweep={name}:NAME --workdir=DIR (the packaged configs are "
      f"{', '.join(CONFIGS)})"
    )
  return (
    f"{name} is a config, not a sweep file; train it with bn-repro --config={name}:VARIANT "
    f"--workdir=DIR (the packaged sweeps are {', '.join(SWEEPS)})"
  )


def get(spec: str) -> ml_collections.ConfigDict:
  """The config `--config=<spec>` gives, before any --config.<field> override.

  E.g. get("mnist_mlp:bn_sigmoid,t10k"); get("path/to/my_config.py:arg"). Like
  ml_collections' config flag, FILE without ":" calls get_config() with no argument.
  """
  path, sep, arg = resolve_path(spec).partition(":")
  module = runpy.run_path(path, run_name="_bn_repro_config_" + re.sub(r"\W", "_", path))
  if "get_config" not in module:
    raise UserError(
      wrong_kind(path, "sweep") if "get_sweep" in module else f"{path} has no get_config()"
    )
  return module["get_config"](arg) if sep else module["get_config"]()
