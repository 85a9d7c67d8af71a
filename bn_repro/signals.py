"""Stop requests: SIGTERM/SIGINT become a stop the training loop honours after its device
call in progress, agreed across processes so that every process stops at the same step.

With several processes and JAX's preemption service (jax.distributed, on by default), a
SIGTERM is left to that service, the scheduler's preemption notice on TPU and elsewhere:
`multihost_utils.reached_preemption_sync_point` tells every process the same stop. SIGINT,
and SIGTERM without the service, are caught here and compared across processes.
"""

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class StopSignals:
  """Turns SIGTERM/SIGINT into a request the loop honours after its device call in progress.

  A second signal while the first is pending interrupts at once.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: int | None = None
    self._previous = {}
    # SIGTERM goes to JAX's preemption service, which needs one call per check, counted
    # alike in every process (the loop checks at the same points everywhere).
    self.preemption_service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
    self.checks = 0

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:
      raise KeyboardInterrupt
    self.requested = signum
    logging.warning(
      "Signal %d: saving a checkpoint after this device call, then stopping "
      "(send it again to stop at once)",
      signum,
    )

  def agreed(self) -> int | None:
    """The pending signal as all processes see it: with several processes, a signal that
    reached any of them stops all of them at the same step (else the others would wait
    forever in the next collective)."""
    if jax.process_count() == 1:
      return self.requested
    if self.preemption_service:
      self.checks += 1
      if multihost_utils.reached_preemption_sync_point(self.checks):
        logging.warning("Preemption notice (SIGTERM): saving a checkpoint, then stopping")
        return int(signal.SIGTERM)
    seen = multihost_utils.process_allgather(np.asarray(self.requested or 0, np.int32))
    return int(np.max(seen)) or None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        if not (sig == signal.SIGTERM and self.preemption_service):
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
