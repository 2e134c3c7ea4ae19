"""Runs a sweep's unfinished runs as child processes, at most one per launcher slot: the
progress lines, the ETA, and SIGINT / SIGTERM passed on to the children as SIGTERM (the
trainer then saves a checkpoint and exits 0).

A launcher whose trainers run elsewhere (`stop_command`: the TPU launcher, whose local
child is only bash and gcloud ssh) is stopped through that command instead: the remote
trainers get the SIGTERM and are waited for, what each did (saved at step N, still
running, gone) is recorded in RUN/remote_stop.json and the log, and the local child is
left to end by itself (SIGTERM after `stop_grace_s` if it does not)."""

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
  stop_started: bool = False
  stopper: subprocess.Popen | None = None  # The remote stop (launcher.stop_command).
  stopped_at: float = 0.0  # When the remote stop ended.
  remote: list | None = None  # Its outcome per worker (launchers.parse_stop).


@dataclasses.dataclass
class Result:
  finished: list
  failed: list
  stopped: list  # Exited 0 (or by our SIGTERM) before the end: resumable.
  skipped: list  # Not started: --fail_fast after a failure, or interrupted.
  interrupted: int | None  # The signal that stopped the sweep.
  # Remote runs a stop did not stop (a trainer still running after the wait).
  still_running: list = dataclasses.field(default_factory=list)
  remote: dict = dataclasses.field(default_factory=dict)  # Run name -> remote stop outcome.

  @property
  def exit_status(self) -> int:
    return 128 + self.interrupted if self.interrupted else 0


class Scheduler:
  """Starts the runs in order, `len(launcher.slots)` at a time, until all have ended."""

  def __init__(self, runs, launcher, metric: str = '', fail_fast: bool = False,
               progress_every: float = 30.0, poll_s: float = 0.2, stop_grace_s: float = 30.0):
    self.launcher, self.metric, self.fail_fast = launcher, metric, fail_fast
    self.progress_every, self.poll_s, self.stop_grace_s = progress_every, poll_s, stop_grace_s
    self.remote_stop = hasattr(launcher, 'stop_command')
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
        self._collect_stops()
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
        for proc in (child.proc, child.stopper):
          if proc is not None:
            _killpg(proc, signal.SIGTERM)
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
    self._forward(in_handler=True)  # Printing is left to the loop (print is not reentrant).

  def _forward(self, in_handler: bool = False) -> None:
    """SIGTERM to every child once the sweep is interrupted (for a remote launcher: its stop
    command, started by the loop, and SIGTERM once that has ended and stop_grace_s passed);
    SIGKILL after a second signal."""
    if not self.result.interrupted:
      return
    sig = signal.SIGKILL if self.kill else signal.SIGTERM
    for child in self.running:
      if self.remote_stop and not self.kill:
        if not child.stop_started:
          if in_handler:
            continue  # The loop starts the stop (no processes from a signal handler).
          child.stop_started = True
          self._start_stop(child)
        if child.stopper is not None and (
            child.remote is None or time.time() < child.stopped_at + self.stop_grace_s):
          continue  # The remote trainers are stopping; the local child ends by itself.
      if child.signalled != sig:
        child.signalled = sig
        _killpg(child.proc, sig)
        if self.kill and child.stopper is not None:
          _killpg(child.stopper, sig)

  def _start_stop(self, child) -> None:
    """Starts the launcher's stop command for a running run (output in RUN/remote_stop.log)."""
    run = child.run
    argv, env = self.launcher.stop_command(run, child.slot)
    command = launchers.describe_command(argv, env)
    with open(os.path.join(run.dir, status.LOG), 'a', encoding='utf-8') as log:
      log.write(f'--- denseav_jax.sweep {status.now()}: stopping the remote trainers: '
                f'{command}\n')
    try:
      with open(os.path.join(run.dir, status.REMOTE_STOP_LOG), 'w', encoding='utf-8') as out:
        child.stopper = subprocess.Popen(
            argv, cwd=configs.ROOT, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env})
    except OSError as e:  # Then the local child gets the SIGTERM right away.
      child.stopper, child.stopped_at = None, 0.0
      child.remote = [dict(worker=str(child.slot), state='unknown', step=None,
                           text=f'could not run the stop ({e.strerror})')]

  def _collect_stops(self) -> None:
    """Records the outcome of each remote stop that has ended (RUN/remote_stop.json)."""
    for child in self.running:
      if child.stopper is None or child.remote is not None:
        continue
      rc = child.stopper.poll()
      if rc is None:
        continue
      run = child.run
      log_path = os.path.join(run.dir, status.REMOTE_STOP_LOG)
      try:
        with open(log_path, encoding='utf-8', errors='replace') as f:
          text = f.read()
      except OSError:
        text = ''
      workers = launchers.parse_stop(text) or [dict(
          worker=str(child.slot), state='unknown', step=None,
          text=f'the stop said nothing (exit status {rc}): {status.last_line(log_path)}')]
      child.remote, child.stopped_at = workers, time.time()
      self.result.remote[run.name] = workers
      summary = '; '.join(f'{w["worker"]} {w["text"]}' for w in workers)
      status.write_json(os.path.join(run.dir, status.REMOTE_STOP_FILE), dict(
          time=status.now(), slot=child.slot, exit_status=rc, workers=workers))
      with open(os.path.join(run.dir, status.LOG), 'a', encoding='utf-8') as log:
        log.write(f'--- denseav_jax.sweep {status.now()}: remote trainers: {summary}\n')
      say(f'{self.prefix()} {run.name} on {child.slot}: {summary}')

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
      if rc is None or (child.stopper is not None and child.remote is None):
        continue  # Running, or its remote trainers are being stopped.
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
      elif child.remote is not None and any(w['state'] == 'still running'
                                            for w in child.remote):
        self.result.still_running.append(run)
        say(f'{self.prefix()} {run.name}: its trainers on {child.slot} are still running '
            f'after the stop ({status.REMOTE_STOP_FILE}); stop them with STOP=1 '
            f'TPU={child.slot} ZONE={os.environ.get("ZONE", "...")} bash launch/tpu_pod.sh '
            f'{run.dir}')
      elif (rc == 0 or (child.signalled and rc in (-signal.SIGTERM, -signal.SIGKILL))
            or (child.remote and all(w['state'] in ('saved', 'exited', 'gone')
                                     for w in child.remote))):
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


def _killpg(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass
