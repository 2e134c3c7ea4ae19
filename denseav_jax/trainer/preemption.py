"""When to stop early, agreed by every host: SIGTERM, Orbax's preemption sync point, the
time budget (docs/training.md#preemption-and-stopping).

A single host gets no preemption notice from Orbax (its sync point needs jax.distributed),
so SIGTERM (what schedulers and `kill` send; SLURM with --signal, TPU maintenance events,
Kubernetes) is caught here, with the time it arrived: the loop saves the step, then exits 0.

Agreement: Orbax's sync point is the same step on every host by construction, so it is read
every step. The other reasons are local to a host (the signalled one; its clock), so they
are all-gathered, and all-gathering blocks the host until every host reaches it: on several
hosts that happens only every `every_steps` steps and at the steps the caller says already
synchronise (saves, evaluations), so hosts keep dispatching ahead in between. Every host
sees the all-gather's result at the same step and stops there. One process has nothing to
agree with and checks every step.
"""

import signal
import threading
import time
from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

REASONS = ('sigterm', 'preemption', 'max_seconds')


class StopRequest:
  """Catches SIGTERM (and SIGINT if asked) while training; restores the old handlers.

  `t_received`: time.time() when the first signal arrived (the start of the stop latency).
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = tuple(signals)
    self.received: int | None = None
    self.t_received: float | None = None
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
      self.t_received = time.time()
      print(f'Received {signal.Signals(signum).name}: finishing this step, saving a '
            'checkpoint, then exiting', flush=True)
    self.received = signum

  @property
  def requested(self) -> bool:
    return self.received is not None


def _allgather(local: np.ndarray) -> np.ndarray:
  """[processes, len(local)]: every process's vector (a collective: blocks until all)."""
  return np.asarray(multihost_utils.process_allgather(local)).reshape(-1, local.size)


class StopAgreement:
  """Should every host stop now, and why (see the module doc).

  `process_count` and `allgather` default to JAX's; tests pass their own.
  """

  def __init__(self, request: StopRequest, checkpoints, max_seconds: float,
               every_steps: int = 1, process_count: int | None = None,
               allgather: Callable[[np.ndarray], np.ndarray] | None = None):
    self.request, self.checkpoints = request, checkpoints
    self.max_seconds = float(max_seconds or 0)
    self.every_steps = max(int(every_steps or 1), 1)
    self.process_count = jax.process_count() if process_count is None else process_count
    self._allgather = allgather or _allgather
    self.t_start = time.time()
    self.pending: list[str] = []  # What abandon_eval() agreed on.
    self.t_since: float | None = None  # When the agreed stop's earliest cause happened.
    self.gathers = 0  # All-gathers so far (how often hosts waited for each other).

  def _local(self, preempted: bool) -> np.ndarray:
    """[SIGTERM, preempted, over time, seconds since the signal, seconds since the budget
    ran out] (-inf: not happened). Ages, not clock times: the all-gather carries float32
    (JAX without x64), which holds a few seconds' age to the millisecond but not a date."""
    now = time.time()
    over = bool(self.max_seconds and now - self.t_start > self.max_seconds)
    t_signal = self.request.t_received if self.request.requested else None
    age_signal = -np.inf if t_signal is None else now - t_signal
    age_over = now - self.t_start - self.max_seconds if over else -np.inf
    return np.array([self.request.requested, preempted, over, age_signal, age_over],
                    np.float32)

  def _agree(self, local: np.ndarray) -> list[str]:
    if self.process_count > 1:
      self.gathers += 1
      every = self._allgather(local).reshape(-1, local.size)
      local = np.concatenate([every[:, :3].any(axis=0), every[:, 3:].max(axis=0)])
    return self._decide(local)

  def _decide(self, agreed: np.ndarray) -> list[str]:
    reasons = [r for r, v in zip(REASONS, agreed[:3]) if v]
    if reasons and self.t_since is None:
      age = float(max(agreed[3], agreed[4]))  # The signal, or the end of the time budget...
      self.t_since = time.time() - (age if np.isfinite(age) else 0.0)  # ...else now.
    return reasons

  def reasons(self, step: int, sync: bool = False) -> list[str]:
    """The reasons to stop after training step `step`, the same on every host. `sync`: the
    caller synchronises the hosts at this step anyway (a save, an evaluation), so the
    local reasons are agreed now whatever the cadence."""
    preempted = bool(self.checkpoints.reached_preemption(step))
    local = self._local(preempted)
    if self.process_count > 1 and not (sync or step % self.every_steps == 0):
      # Orbax's sync point is already agreed; the rest waits for the next all-gather.
      return self._decide(np.array([0, 1, 0, -np.inf, -np.inf])) if preempted else []
    return self._agree(local)

  def abandon_eval(self) -> bool:
    """Between evaluation batches: True (on every host at once) when a SIGTERM or the time
    budget asks to stop; the reasons are then in `pending`. Orbax's sync point names a
    training step, so it is not seen here (the loop stops at the next step)."""
    self.pending = self._agree(self._local(False))
    return bool(self.pending)

  def latency(self) -> float:
    """Seconds since the agreed stop's cause (the signal, the end of the time budget, or
    the step that saw Orbax's notice)."""
    return time.time() - (self.t_since if self.t_since is not None else time.time())
