"""JAX's persistent compilation cache for every run (`config.compilation_cache`).

A run's programs (the model's initialization, the training chunk, the evaluation) compile
once per host kind; a later run of the same programs loads them from disk instead of
compiling them (docs/RESULTS.md, "Speed", has the times). A loaded program is the
executable a compile would produce, so no number changes.

`config.compilation_cache`:
  "auto"  JAX's own setting when one is made (JAX_COMPILATION_CACHE_DIR, jax.config), else
          $BN_REPRO_CACHE_DIR or ${XDG_CACHE_HOME:-~/.cache}/bn_repro/jax; where that
          directory cannot be created, no cache (the start block says so).
  "off"   compile every program in every run.
  a path  that directory (local or gs://); one that cannot be created is an error.
A directory JAX was given already (JAX_COMPILATION_CACHE_DIR, jax.config) holds whatever the
field says; the start block names the one in use.
The programs go in a subdirectory per host kind (`host_key`): JAX's cache key holds the
program, the JAX version, the XLA flags and the device kind, but on a CPU host not its
instruction set, so a program compiled where AVX-512 exists would stop a machine without it
(a home directory shared by a mixed cluster); nor the cores the process may use, by which
XLA:CPU splits operations (bn_repro/placement.py), so a program compiled under one placement
never serves another.

The setting holds for the process: JAX opens its cache at the first compile, so a later
run in the same process keeps the first one's cache (and names it). JAX runs what it finds in
its cache: keep it where only its owner can write.
"""

import hashlib
import os
import platform
from pathlib import Path

import jax

from bn_repro import parallel, storage
from bn_repro.errors import UserError

AUTO, OFF = "auto", "off"
ENV = "BN_REPRO_CACHE_DIR"


def default_dir() -> str:
  """$BN_REPRO_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/bn_repro/jax."""
  if os.environ.get(ENV):
    return os.environ[ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bn_repro", "jax")


def host_key(machine: str, cpu: str, cores: int) -> str:
  """The subdirectory of a host kind: its architecture, the cores this process may use and a
  hash of the CPU's model and feature flags (`cpu`, e.g. /proc/cpuinfo's first block)."""
  digest = hashlib.sha256(cpu.encode()).hexdigest()[:12]
  return f"{machine or 'unknown'}-{cores}cpu-{digest}"


def this_host() -> str:
  """host_key of this machine and process."""
  cpu = platform.processor()
  try:  # Linux: the model and feature flags of the first CPU (every core has the same)
    block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    cpu = "\n".join(
      l
      for l in block.splitlines()
      if l.split(":")[0].strip() in ("model name", "flags", "Features")
    )
  except OSError:
    pass
  return host_key(platform.machine(), cpu, parallel.usable_cpus())


def configure(spec: str) -> str:
  """Sets JAX's persistent cache as `spec` says (before the process's first compile) and
  returns the start block's line about it; UserError for a path that cannot be created."""
  spec = str(spec).strip() or OFF
  current = jax.config.values.get("jax_compilation_cache_dir")
  if spec == OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return "compilation cache: off (config.compilation_cache=off)"
  if spec == AUTO and current:
    return f"compilation cache: {current} (JAX's own setting)"
  path = os.path.join(default_dir() if spec == AUTO else spec, this_host())
  if storage.is_local(path):
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      if spec == AUTO:
        return f"compilation cache: off ({path} cannot be created: {e.strerror})"
      raise UserError(
        f"cannot create {path} ({e.strerror}); give a writable directory or 'off'",
        field="config.compilation_cache",
      ) from None
  if current and current != path:
    return f"compilation cache: {current} (JAX's setting, made before this run, holds)"
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the MLP's too
  return f"compilation cache: {path} (config.compilation_cache={spec})"
