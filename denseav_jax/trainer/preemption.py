"""When to stop early, agreed by every host: SIGTERM, Orbax's preemption sync point, the
time budget (docs/training.md#preemption).

A single host gets no preemption notice from Orbax (its sync point needs jax.distributed),
so SIGTERM (what schedulers and `kill` send; SLURM with --signal, TPU maintenance events,
Kubernetes) is caught here: the step in flight finishes, a checkpoint is saved and the
run exits 0. On several hosts each host's reasons are all-gathered every step, so all stop
at the same step even when only one of them was signalled.
"""

import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

REASONS = ('sigterm', 'preemption', 'max_seconds')


class StopRequest:
  """Catches SIGTERM (and SIGINT if asked) while training; restores the old handlers."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = tuple(signals)
    self.received: int | None = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is None:
      print(f'Received {signal.Signals(signum).name}: finishing this step, saving a '
            'checkpoint, then exiting', flush=True)
    self.received = signum

  @property
  def requested(self) -> bool:
    return self.received is not None


class StopAgreement:
  """Per step: should every host stop now, and why (see the module doc)."""

  def __init__(self, request: StopRequest, checkpoints, max_seconds: float):
    self.request, self.checkpoints = request, checkpoints
    self.max_seconds = float(max_seconds or 0)
    self.t_start = time.time()

  def reasons(self, step: int) -> list[str]:
    local = [self.request.requested,
             self.checkpoints.reached_preemption(step),
             bool(self.max_seconds and time.time() - self.t_start > self.max_seconds)]
    if jax.process_count() > 1:
      local = list(np.asarray(multihost_utils.process_allgather(np.asarray(local))
                              ).reshape(-1, len(REASONS)).any(axis=0))
    return [r for r, v in zip(REASONS, local) if v]
