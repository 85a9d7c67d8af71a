"""Checkpoints of a run: the Orbax manager, what a checkpoint holds, restore with fallback.

A checkpoint holds the step, params, batch_stats, opt_state and the data position (the
seed and examples seen). `restore` takes the newest usable one: a checkpoint written by
a different model (other shapes or leaves) or a corrupt one is an error naming it, or,
with `fallback`, a warning and the next older one.
"""

import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bn_repro.errors import UserError
from bn_repro.rundir import RunDir
from bn_repro.storage import absolute

MAX_TO_KEEP = 3


def manager(run: RunDir) -> ocp.CheckpointManager:
  """Orbax manager of the run's checkpoints.

  The state is replicated, so with several processes each one reads the checkpoint
  on its own and process 0 alone writes it (the run directory must be shared storage).
  """
  directory = absolute(run.checkpoint_dir)
  options = ocp.CheckpointManagerOptions(max_to_keep=MAX_TO_KEEP, create=True)
  if jax.process_count() > 1:
    directory.mkdir(parents=True, exist_ok=True)
    me = jax.process_index()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=MAX_TO_KEEP,
      create=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}
      ),
    )
  return ocp.CheckpointManager(
    directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def to_checkpoint(state: Any, config: Any) -> dict:
  """The tree saved for a TrainState (host or device arrays) of `config`'s run."""
  step = int(state.step)
  return {
    "step": step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
    "data_position": {"seed": config.seed, "examples": step * config.batch_size},
  }


def from_checkpoint(state: Any, restored: dict) -> Any:
  """`state` with the restored step, params, statistics and optimizer state."""
  return state.replace(
    step=restored["step"],
    params=restored["params"],
    batch_stats=restored["batch_stats"],
    opt_state=restored["opt_state"],
  )


def save(mgr: ocp.CheckpointManager, state: Any, config: Any) -> None:
  mgr.save(int(state.step), args=ocp.args.StandardSave(to_checkpoint(state, config)))


def leaves_by_path(tree: Any) -> dict[str, Any]:
  """Leaves by path, with attribute and key steps written alike ("['a']['b']")."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {re.sub(r"\.(\w+)", r"['\1']", jax.tree_util.keystr(p)): v for p, v in leaves}


def compatibility_problems(metadata: Any, template: Any) -> list[str]:
  """Differences in structure or shape between a checkpoint and the model's state."""
  saved, wanted = leaves_by_path(metadata), leaves_by_path(template)
  problems = [f"{k} missing from the checkpoint" for k in sorted(set(wanted) - set(saved))]
  problems += [
    f"{k} in the checkpoint but not in the model" for k in sorted(set(saved) - set(wanted))
  ]
  for k in sorted(set(saved) & set(wanted)):
    shape_saved = tuple(getattr(saved[k], "shape", ()) or ())
    shape_wanted = tuple(np.shape(wanted[k]))
    if shape_saved != shape_wanted:
      problems.append(f"{k} has shape {shape_saved} in the checkpoint, {shape_wanted} in the model")
  return problems


def _why_not(mgr: ocp.CheckpointManager, step: int, template: dict) -> tuple[Any, str, str]:
  """(restored tree, "", "") or (None, reason, hint) for the checkpoint at `step`."""
  try:
    problems = compatibility_problems(mgr.item_metadata(step).tree, template)
    if not problems:
      return mgr.restore(step, args=ocp.args.StandardRestore(template)), "", ""
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    reason = "it was written by a different model: " + "; ".join(problems[:3]) + more
    return None, reason, "use a new --workdir for a different model"
  except Exception as e:  # corrupt or truncated files
    return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}", ""


def restore(
  mgr: ocp.CheckpointManager, template: dict, fallback: bool, last: int | None = None
) -> tuple[int, Any]:
  """(step, restored tree) of the newest usable checkpoint at a step <= `last` (default:
  any), or (0, None) when there is none."""
  steps = sorted((s for s in mgr.all_steps() if last is None or s <= last), reverse=True)
  for step in steps:
    restored, reason, hint = _why_not(mgr, step, template)
    if restored is not None:
      return step, restored
    older = [s for s in steps if s < step]
    hint = hint or (
      f"rerun with --fallback_checkpoint to resume from an older one (steps {older})"
      if older
      else "delete it to start over"
    )
    where = f"{mgr.directory}/{step}"
    if not fallback:
      raise UserError(f"checkpoint {where} cannot be restored: {reason}; {hint}", field="--workdir")
    logging.warning("Checkpoint %s cannot be restored (%s); trying the previous one", where, reason)
  if steps:
    raise UserError(
      f"no checkpoint in {mgr.directory} can be restored; delete them to start over",
      field="--workdir",
    )
  return 0, None
