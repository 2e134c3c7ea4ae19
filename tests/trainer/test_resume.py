"""Real training runs killed and restarted: exact resume after SIGKILL at random moments
(during saves too), SIGTERM saves and exits 0, and two processes x 4 devices (the local
launcher) checkpoint and resume across process counts like one 8-device process.

Every run is a subprocess under a timeout (a jax.distributed process whose peer died would
otherwise wait for its heartbeat timeout); they share a persistent compilation cache.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, final_params, subprocess_env
from denseav_jax.checkpoint import model_io
from denseav_jax.trainer import progress

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py') + ':runlocal'
STEPS = 8
OVERRIDES = {'pretrain_steps': 3, 'pretrain_lr': 2e-3, 'lr': 1e-3, 'warmup_steps': 1,
             'lr_schedule': 'constant', 'num_train_steps': STEPS, 'log_every_steps': 1,
             'checkpoint_every_steps': 2, 'keep_checkpoints': 10, 'eval_at_end': False}
TIMEOUT = 300  # Generous: under a parallel test run a restart waits for its share of the CPU.

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def _flags(**changes):
  values = dict(OVERRIDES, **changes)
  return [f'--config.{k}={v}' for k, v in values.items()]


def _start(workdir, *extra):
  log = open(f'{workdir}.log', 'a')  # pylint: disable=consider-using-with
  return subprocess.Popen(
      [sys.executable, '-m', 'denseav_jax.train', '--config', CONFIG, '--workdir',
       str(workdir), *_flags(), *extra], cwd=ROOT, env=subprocess_env(), stdout=log,
      stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc):
  try:
    return proc.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail('a training run timed out')


def _log(workdir):
  with open(f'{workdir}.log') as f:
    return f.read()


def _losses(workdir):
  return {s: r['loss'] for s, r in progress.read_metrics(str(workdir)).items()}


def _final_params(workdir):
  return final_params(workdir, STEPS)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run: per-step losses and final parameters (its programs go to the
  compilation cache, which the runs below load)."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  p = _start(workdir)
  assert _wait(p) == 0, _log(workdir)[-3000:]
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, STEPS + 1))
  return dict(workdir=workdir, losses=losses, params=_final_params(workdir))


def _assert_same_run(workdir, reference, exact=True):
  got = _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1)), got
  params = _final_params(workdir)
  if exact:
    assert got == reference['losses']
    for name, x in params.items():
      np.testing.assert_array_equal(x, reference['params'][name], err_msg=name)
  else:
    for s in got:
      assert got[s] == pytest.approx(reference['losses'][s], abs=1e-5), s
    for name, x in params.items():
      np.testing.assert_allclose(x, reference['params'][name], rtol=0, atol=1e-5,
                                 err_msg=name)


def _temporaries(workdir) -> set[str]:
  """Orbax's temporary folders: a save in flight (or one a killed run left behind)."""
  d = f'{workdir}/checkpoints'
  return {n for n in os.listdir(d) if 'tmp' in n} if os.path.isdir(d) else set()


def _last_step(workdir) -> int:
  steps = _losses(workdir)
  return max(steps) if steps else 0


def test_sigkill_at_random_moments_resumes_exactly(reference, tmp_path):
  """Killed with SIGKILL during saves and at random steps / times, restarted each time:
  the same per-step losses and final parameters as the uninterrupted run, bitwise."""
  rng = np.random.default_rng(0)
  workdir = tmp_path / 'run'
  plan = ['save', ('step', int(rng.integers(3, 6))), 'save',
          ('seconds', float(rng.uniform(0.0, 4.0))), 'save']
  kills, during_save = [], 0
  for when in plan:
    left_behind = _temporaries(workdir)  # By an earlier kill; the new run removes them.
    p = _start(workdir)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < TIMEOUT:
      new_save = _temporaries(workdir) - left_behind
      if ((when == 'save' and new_save) or
          (isinstance(when, tuple) and when[0] == 'step' and _last_step(workdir) >= when[1]) or
          (isinstance(when, tuple) and when[0] == 'seconds' and time.time() - t0 > when[1])):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        during_save += bool(new_save & _temporaries(workdir))
        kills.append((when, _last_step(workdir)))
        break
      time.sleep(0.002)
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      pytest.fail(f'no kill moment {when} within the timeout')
    if p.returncode == 0:  # Finished before the moment came.
      break
  assert during_save >= 1, kills  # At least one SIGKILL landed inside a save.
  p = _start(workdir)
  assert _wait(p) == 0, _log(workdir)[-3000:]
  assert _log(workdir).count('Resumed from') >= 2, kills
  _assert_same_run(workdir, reference, exact=True)
  # No temporary folder survives, and no checkpoint was set aside.
  assert not _temporaries(workdir)
  assert not os.path.exists(f'{workdir}/checkpoints_damaged')


def _launch(workdir, n, *flags):
  # No persistent compilation cache: JAX 0.10.2's cache hands a 2-process CPU job an
  # executable compiled for another device assignment of the same program (a 1-process run,
  # or another mesh order), which then computes wrong losses (measured;
  # docs/training.md#multi-host).
  env = subprocess_env(devices=8 // n, cache=False, N=n, DEVICES=8 // n, CONFIG=CONFIG)
  try:
    return subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
                           str(workdir), *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    subprocess.run(['pkill', '-f', str(workdir)], check=False)
    pytest.fail('multi-process run timed out')


@pytest.mark.multiprocess
def test_two_processes_checkpoint_and_resume_across_process_counts(reference, tmp_path):
  """2 processes x 4 devices (steps 1-4, a hybrid mesh with one process per 'node'), then
  1 process x 8 devices (5-8): it continues the same global stream from the other's
  checkpoint, and the run matches the 8-device one within 1e-5. (The data position and
  the shardings are per checkpoint, not per process count, so growing back to 2 processes
  takes the same path; it was a third launch here, ~25 s.)"""
  workdir = tmp_path / 'run'
  r = _launch(workdir, 2, *_flags(num_train_steps=4, mesh="(('data',4),)",
                                  mesh_dcn="(('data',2),)"))
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert 'over 2 process(es)' in r.stdout, r.stdout
  with open(f'{workdir}/{progress.METRICS_FILE}') as f:  # Process 0 alone writes it.
    assert [json.loads(l)['step'] for l in f if l.strip()] == [1, 2, 3, 4]
  p = _start(workdir)
  assert _wait(p) == 0, _log(workdir)[-3000:]
  assert 'data from example 64)' in _log(workdir)  # 4 steps of 16.
  _assert_same_run(workdir, reference, exact=False)
