"""A stop saves before anything else (docs/training.md#preemption-and-stopping).

Real runs get SIGTERM and, as a scheduler does after its grace period, SIGKILL GRACE
seconds later: the step is on disk by then although the evaluation the old order ran first
(the end-of-run one, or a periodic one in progress) takes minutes, and the resumed run ends
with the uninterrupted run's parameters, bitwise. Events are read from the run's console
lines, each wait under a timeout. The multi-host cadence of the stop agreement is checked
with a stand-in all-gather.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, final_params, subprocess_env
from denseav_jax.checkpoint import model_io
from denseav_jax.evals import suite as suite_lib
from denseav_jax.trainer import preemption

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py') + ':runlocal'
STEPS = 8
OVERRIDES = {'pretrain_steps': 3, 'pretrain_lr': 2e-3, 'lr': 1e-3, 'warmup_steps': 1,
             'lr_schedule': 'constant', 'num_train_steps': STEPS, 'log_every_steps': 1,
             'checkpoint_every_steps': 100, 'keep_checkpoints': 10, 'eval_at_end': False,
             'eval_every_steps': 0, 'eval_num_figures': 0}
# An evaluation far longer than the grace: 20,000 speech-prompted examples in 1,250 batches
# of 16 (about 8 ms an example on the 2-core machine, measured: ~3 minutes; the runlocal sets
# have 24). The resumed runs evaluate runlocal's own small sets.
BIG_EVAL = {'evals.speech_prompted.num_examples': 20000}
GRACE = 20.0  # SIGTERM -> SIGKILL, as SLURM's --signal=B:TERM@120 does with 120 s.
TIMEOUT = 300  # Generous: under a parallel test run a start waits for its share of the CPU.


class _Run:
  """A training run as a subprocess; its console lines arrive through a queue."""

  def __init__(self, workdir, **changes):
    values = dict(OVERRIDES, **changes)
    self.workdir = str(workdir)
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, '-m', 'denseav_jax.train', '--config', CONFIG, '--workdir',
         self.workdir, *[f'--config.{k}={v}' for k, v in values.items()]],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, start_new_session=True)
    self.lines: queue.Queue = queue.Queue()
    self.log: list[str] = []
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.log.append(line)
      self.lines.put(line)
    self.lines.put(None)

  def text(self) -> str:
    return ''.join(self.log)

  def wait_for(self, pattern: str, timeout: float) -> str | None:
    """The first line from now on containing `pattern`; None after `timeout` s or EOF."""
    deadline = time.time() + timeout
    while True:
      try:
        line = self.lines.get(timeout=max(deadline - time.time(), 0))
      except queue.Empty:
        return None
      if line is None:
        self.lines.put(None)
        return None
      if pattern in line:
        return line

  def wait_exit(self, timeout: float) -> int | None:
    try:
      return self.proc.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
      return None

  def kill(self):
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()


def _finish(run) -> None:
  try:
    code = run.wait_exit(TIMEOUT)
  finally:
    run.kill()
  assert code == 0, run.text()[-3000:]


def _final_params(workdir):
  return final_params(workdir, STEPS)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run's final parameters (no evaluation: it changes no state)."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  _finish(_Run(workdir))
  return _final_params(workdir)


def _sigterm_then_sigkill(run, wait_pattern: str):
  """SIGTERM once `wait_pattern` is printed, SIGKILL GRACE s later if still running.
  Returns the 'Stopping at step' line (None if none came within the grace) and the exit
  code (None when it had to be killed)."""
  try:
    assert run.wait_for(wait_pattern, TIMEOUT), run.text()[-3000:]
    t_term = time.time()
    run.proc.send_signal(signal.SIGTERM)
    line = run.wait_for('Stopping at step', GRACE)
    code = run.wait_exit(t_term + GRACE - time.time())
  finally:
    run.kill()
  return line, code


def _stopped_step(line, run) -> int:
  assert line, f'nothing saved within the {GRACE} s grace:\n' + run.text()[-3000:]
  latency = float(re.search(r'on disk ([0-9.]+) s after the signal', line).group(1))
  assert 0 <= latency < GRACE, line
  print(f'stop latency (SIGTERM to the checkpoint on disk): {latency:.2f} s')
  return int(line.split('Stopping at step ')[1].split(' ')[0])


def _assert_same_params(workdir, reference):
  for name, x in _final_params(workdir).items():
    np.testing.assert_array_equal(x, reference[name], err_msg=name)


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_saves_before_the_end_of_run_evaluation(reference, tmp_path):
  """eval_at_end with a minutes-long evaluation: a SIGTERM in training saves the step
  within the grace, evaluates nothing and exits 0; the resumed run trains to the end,
  evaluates there, and ends with the uninterrupted run's parameters, bitwise. (This is
  also the plain SIGTERM -> save -> exit 0 -> exact resume check.)"""
  workdir = tmp_path / 'run'
  run = _Run(workdir, eval_at_end=True, **BIG_EVAL)
  line, code = _sigterm_then_sigkill(run, f'step 2/{STEPS} ')
  stopped = _stopped_step(line, run)
  assert code == 0 and 'Received SIGTERM' in run.text(), run.text()[-3000:]  # Not killed.
  assert stopped < STEPS and stopped in model_io.checkpoint_steps(str(workdir))
  assert 'eval step' not in run.text() and not os.path.exists(f'{workdir}/eval'), run.text()
  resumed = _Run(workdir, eval_at_end=True)
  _finish(resumed)
  assert f'/checkpoints/{stopped} (phase' in resumed.text(), resumed.text()
  assert sorted(os.listdir(f'{workdir}/eval')) == [str(STEPS)]  # The end-of-run one only.
  assert suite_lib.read_metrics(str(workdir), STEPS)
  _assert_same_params(workdir, reference)


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigterm_abandons_a_periodic_evaluation_and_saves(reference, tmp_path):
  """A SIGTERM during the step-3 evaluation: it is abandoned between batches (nothing
  written), step 3 is saved within the grace; the resumed run evaluates step 3 first, then
  trains on with the uninterrupted run's parameters at the end."""
  workdir = tmp_path / 'run'
  run = _Run(workdir, eval_every_steps=3, **BIG_EVAL)
  line, code = _sigterm_then_sigkill(run, 'eval step 3: running')
  stopped = _stopped_step(line, run)
  assert code == 0, run.text()[-3000:]
  assert stopped == 3 and 'eval step 3: abandoned' in run.text(), run.text()[-3000:]
  assert 3 in model_io.checkpoint_steps(str(workdir))
  assert not suite_lib.read_metrics(str(workdir), 3)
  resumed = _Run(workdir, eval_every_steps=3)
  _finish(resumed)
  text = resumed.text()
  assert text.index('eval step 3: running') < text.index(f'step 4/{STEPS} '), text
  for step in (3, 6):
    assert suite_lib.read_metrics(str(workdir), step), step
  _assert_same_params(workdir, reference)


@pytest.mark.subprocess
@pytest.mark.slow
def test_eval_on_stop_evaluates_after_the_save(tmp_path):
  """config.eval_on_stop: a stop (here the time budget, spent by the first step's
  compilation) saves, waits for the checkpoint, then evaluates the stopped step."""
  workdir = tmp_path / 'run'
  run = _Run(workdir, max_seconds=0.001, eval_on_stop=True, eval_at_end=True)
  _finish(run)
  text = run.text()
  line = re.search(r'Stopping at step (\d+) after config.max_seconds=0.001: saved .* \(on disk '
                   r'[0-9.]+ s after the time budget ran out\)', text)
  assert line, text[-3000:]
  stopped = int(line.group(1))
  assert stopped < STEPS and stopped in model_io.checkpoint_steps(str(workdir))
  assert text.index(f'eval step {stopped}: running') > line.start(), text[-3000:]
  assert suite_lib.read_metrics(str(workdir), stopped)


class _Checkpoints:
  """Orbax's preemption sync point at `step` (the same step on every host)."""

  def __init__(self, step=None):
    self.step = step

  def reached_preemption(self, step):
    return step == self.step


def test_multi_host_agreement_gathers_every_n_steps_and_at_syncs():
  """Two hosts (a stand-in all-gather holding the other host's reasons): the local reasons
  are gathered every N steps and at the steps the loop synchronises anyway, so a SIGTERM on
  either host stops both at the next such step; Orbax's sync point stops at its own step
  without a gather; one process checks every step and never gathers."""
  none = np.array([0, 0, 0, -np.inf, -np.inf], np.float32)  # [flags, ages of the causes]
  other = {'row': none}
  calls = []

  def allgather(local):
    calls.append(local.copy())
    return np.stack([local, other['row']])

  request = preemption.StopRequest()
  stop = preemption.StopAgreement(request, _Checkpoints(), 0, every_steps=5, process_count=2,
                                  allgather=allgather)
  assert [stop.reasons(s) for s in range(1, 11)] == [[]] * 10
  assert len(calls) == 2 and stop.gathers == 2  # Steps 5 and 10.
  request.received, request.t_received = signal.SIGTERM, time.time() - 3  # On this host...
  assert stop.reasons(11) == [] and stop.reasons(12) == [] and len(calls) == 2
  assert stop.reasons(13, sync=True) == ['sigterm'] and len(calls) == 3  # ...at a save.
  assert stop.t_since == pytest.approx(request.t_received, abs=0.5)

  request = preemption.StopRequest()  # SIGTERM on the other host only, 7 s ago.
  other['row'] = np.array([1, 0, 0, 7.0, -np.inf], np.float32)
  stop = preemption.StopAgreement(request, _Checkpoints(), 0, every_steps=5, process_count=2,
                                  allgather=allgather)
  assert [bool(stop.reasons(s)) for s in range(1, 6)] == [False] * 4 + [True]
  assert stop.t_since == pytest.approx(time.time() - 7, abs=0.5)
  assert stop.abandon_eval() and stop.pending == ['sigterm']  # Gathered every batch.

  other['row'] = none
  stop = preemption.StopAgreement(request, _Checkpoints(step=7), 0, every_steps=5,
                                  process_count=2, allgather=allgather)
  n = len(calls)
  assert stop.reasons(6) == [] and stop.reasons(7) == ['preemption'] and len(calls) == n

  request.received, request.t_received = signal.SIGTERM, 1.0  # One process: every step.
  stop = preemption.StopAgreement(request, _Checkpoints(), 0, every_steps=5, process_count=1,
                                  allgather=allgather)
  assert stop.reasons(1) == ['sigterm'] and stop.abandon_eval() and len(calls) == n
  stop = preemption.StopAgreement(preemption.StopRequest(), _Checkpoints(), 1e-9,
                                  process_count=1)
  time.sleep(0.01)
  assert stop.reasons(1) == ['max_seconds']
  assert stop.t_since == pytest.approx(stop.t_start, abs=0.01)
