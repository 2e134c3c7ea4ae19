"""Runs a sweep's unfinished runs as child processes, at most one per launcher slot: the
progress lines, the ETA, and SIGINT / SIGTERM passed on to the children as SIGTERM (the
trainer then saves a checkpoint and exits 0)."""

import dataclasses
import os
import signal
import statistics
import subprocess
import time
from typing import Any

from denseav_jax.experiments.sweep import configs
from denseav_jax.experiments.sweep import launchers
from denseav_jax.experiments.sweep import status
from denseav_jax.trainer import progress


def say(*args) -> None:
  print(*args, flush=True)


@dataclasses.dataclass
class _Child:
  run: Any
  proc: subprocess.Popen
  slot: Any
  started: float
  signalled: int = 0  # The last signal sent to its process group.


@dataclasses.dataclass
class Result:
  finished: list
  failed: list
  stopped: list  # Exited 0 (or by our SIGTERM) before the end: resumable.
  skipped: list  # Not started: --fail_fast after a failure, or interrupted.
  interrupted: int | None  # The signal that stopped the sweep.

  @property
  def exit_status(self) -> int:
    return 128 + self.interrupted if self.interrupted else 0


class Scheduler:
  """Starts the runs in order, `len(launcher.slots)` at a time, until all have ended."""

  def __init__(self, runs, launcher, metric: str = '', fail_fast: bool = False,
               progress_every: float = 30.0, poll_s: float = 0.2):
    self.launcher, self.metric, self.fail_fast = launcher, metric, fail_fast
    self.progress_every, self.poll_s = progress_every, poll_s
    self.total = len(runs)
    done = [r for r in runs if status.is_finished(r.dir, r.num_steps)]
    self.result = Result(done, [], [], [], None)
    self.pending = [r for r in runs if r not in done]
    self.free = list(launcher.slots)
    self.running: list[_Child] = []
    self.durations: list[float] = []
    self.kill = False
    self.announced: set[str] = set()

  def prefix(self) -> str:
    r = self.result
    extra = ''.join(f', {len(v)} {k}' for k, v in (('failed', r.failed),
                                                    ('stopped', r.stopped)) if v)
    return (f'[sweep {len(r.finished)}/{self.total} done{extra}, {len(self.running)} '
            f'running, {len(self.pending)} to go]')

  def run(self) -> Result:
    for run in self.result.finished:
      say(f'{self.prefix()} {run.name}: finished earlier (eval/{run.num_steps}/metrics.json)')
    old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      next_status = time.time() + self.progress_every
      while self.running or (self.pending and not self._halted()):
        self._forward()
        self._announce()
        while self.free and self.pending and not self._halted():
          self._start(self.pending.pop(0), self.free.pop(0))
        self._reap()
        if self.progress_every > 0 and time.time() >= next_status:
          next_status = time.time() + self.progress_every
          if self.running:
            self._status()
        time.sleep(self.poll_s)
    finally:
      for s, handler in old.items():
        signal.signal(s, handler)
      for child in self.running:  # Only after an error in this loop: no orphans left.
        try:
          os.killpg(child.proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
          pass
    self.result.skipped = list(self.pending)
    return self.result

  def _halted(self) -> bool:
    return bool(self.result.interrupted or (self.fail_fast and self.result.failed))

  def _on_signal(self, signum, frame) -> None:
    del frame
    if self.result.interrupted is None:
      self.result.interrupted = signum
    else:
      self.kill = True
    self._forward()  # Printing is left to the loop (print is not reentrant).

  def _forward(self) -> None:
    """SIGTERM to every child once the sweep is interrupted; SIGKILL after a second signal."""
    if not self.result.interrupted:
      return
    sig = signal.SIGKILL if self.kill else signal.SIGTERM
    for child in self.running:
      if child.signalled != sig:
        child.signalled = sig
        try:
          os.killpg(child.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
          pass

  def _announce(self) -> None:
    """Says what the signal handler did (once each: stop, kill)."""
    if self.result.interrupted and 'stop' not in self.announced:
      self.announced.add('stop')
      name = signal.Signals(self.result.interrupted).name
      if self.running:
        say(f'{name} received: asking the {len(self.running)} running run(s) to save a '
            'checkpoint and stop (signal again to kill them)')
    if self.kill and 'kill' not in self.announced:
      self.announced.add('kill')
      say('second signal: killing the running runs (their last checkpoints are kept)')

  def _start(self, run, slot) -> None:
    argv, env = self.launcher.command(run, slot)
    os.makedirs(run.dir, exist_ok=True)
    state = status.describe(run.dir, run.num_steps)
    log_path = os.path.join(run.dir, status.LOG)
    with open(log_path, 'a', encoding='utf-8') as log:
      log.write(f'--- denseav_jax.sweep {status.now()}: start ({state}), launcher '
                f'{self.launcher.name}: {launchers.describe_command(argv, env)}\n')
      log.flush()
      try:
        proc = subprocess.Popen(argv, cwd=configs.ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, 'PYTHONUNBUFFERED': '1', **env})
      except OSError as e:
        log.write(f'--- denseav_jax.sweep: could not start it: {e}\n')
        self.free.append(slot)
        self.result.failed.append(run)
        say(f'{self.prefix()} failed {run.name}: could not start {argv[0]} ({e.strerror})')
        return
    self.running.append(_Child(run, proc, slot, time.time()))
    where = f' on {slot}' if slot else ''
    say(f'{self.prefix()} started {run.name}{where} ({state})')

  def _reap(self) -> None:
    for child in list(self.running):
      rc = child.proc.poll()
      if rc is None:
        continue
      self.running.remove(child)
      self.free.append(child.slot)
      run, took = child.run, time.time() - child.started
      log_path = os.path.join(run.dir, status.LOG)
      with open(log_path, 'a', encoding='utf-8') as log:
        log.write(f'--- denseav_jax.sweep {status.now()}: exit status {rc} after '
                  f'{took:.0f} s\n')
      if status.is_finished(run.dir, run.num_steps):
        self.durations.append(took)
        self.result.finished.append(run)
        metrics = status.final_metrics(run.dir, run.num_steps)
        say(f'{self.prefix()} finished {run.name} in {took:.0f} s: '
            f'{status.headline(metrics, self.metric)}')
      elif rc == 0 or (child.signalled and rc in (-signal.SIGTERM, -signal.SIGKILL)):
        self.result.stopped.append(run)
        ckpt = status.last_checkpoint(run.dir)
        saved = f'checkpoint at step {ckpt}' if ckpt is not None else 'no checkpoint yet'
        say(f'{self.prefix()} stopped {run.name} after {took:.0f} s ({saved}): resumable')
      else:
        self.result.failed.append(run)
        say(f'{self.prefix()} failed {run.name} (exit status {rc}) after {took:.0f} s: '
            f'{status.last_line(log_path) or "no output"}; log {log_path}')

  def _status(self) -> None:
    parts, left = [], float(len(self.pending))
    for child in self.running:
      step = status.last_step(child.run.dir)
      n = child.run.num_steps
      where = f'step {step}/{n}' if step is not None else 'starting'
      took = progress.fmt_time(time.time() - child.started)
      parts.append(f'{child.run.name} {where} ({took})')
      left += 1 - min(step or 0, n) / n
    if self.durations:
      eta = statistics.fmean(self.durations) * left / max(len(self.launcher.slots), 1)
      eta_text = f'ETA {progress.fmt_time(eta)}'
    else:
      eta_text = 'ETA after the first run finishes'
    say(f'{self.prefix()} {", ".join(parts)}; {eta_text}')
