"""Training: the per-device step, data feeds, the engine for R >= 1 runs, one loop.

step.py    per-device pure functions: state, optimizer, SGD step, chunk, Algorithm 2, eval
feeds.py   what the host sends the devices: in-memory indices or streamed batches
engine.py  compiled programs for one run (Trainer) or R runs in one program (BatchedTrainer)
loop.py    the loop over R runs: log, eval, target, checkpoints, divergence, stop, profile
train.py   the front doors: train_and_evaluate (one run) and train_batched (R runs)
console.py what a run prints: the start block, the summary, progress in a notebook; RunResult
"""

from bn_repro.training.console import RunResult
from bn_repro.training.engine import (
  POPULATION_SEED_OFFSET,
  VARYING,
  BatchedTrainer,
  Trainer,
  check_batchable,
  check_compatible,
)
from bn_repro.training.loop import Diverged, Stopped
from bn_repro.training.step import TrainState
from bn_repro.training.train import RESUMABLE_CHANGES, train_and_evaluate, train_batched

__all__ = [
  "POPULATION_SEED_OFFSET",
  "RESUMABLE_CHANGES",
  "RunResult",
  "VARYING",
  "BatchedTrainer",
  "Diverged",
  "Stopped",
  "TrainState",
  "Trainer",
  "check_batchable",
  "check_compatible",
  "train_and_evaluate",
  "train_batched",
]
