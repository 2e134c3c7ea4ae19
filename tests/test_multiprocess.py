"""Two cooperating JAX processes (4 CPU devices each) train exactly like one 8-device process.

Runs the real launcher in subprocesses under a timeout: a missing peer aborts a
jax.distributed process, so it must never run inside the pytest process.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

STEPS = ['--config.num_train_steps=4', '--config.log_every_steps=1',
         '--config.eval_at_end=False']


def _losses(text: str) -> list[float]:
  return [float(x) for x in re.findall(r'step \d+/\d+ loss ([0-9.]+)', text)]


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, VIRTUAL_ENV=os.path.dirname(os.path.dirname(
      sys.executable)), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  multi = tmp_path / 'multi'
  try:
    r = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
                        str(multi), *STEPS], cwd=ROOT, env=dict(env, N='2', DEVICES='4'),
                       capture_output=True, text=True, timeout=420)
  except subprocess.TimeoutExpired:
    subprocess.run(['pkill', '-f', str(multi)], check=False)
    pytest.fail('multi-process run timed out')
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  multi_losses = _losses(r.stdout)
  assert len(multi_losses) == 4, r.stdout
  # One iterator state per process in the checkpoint.
  data_dir = multi / 'checkpoints' / '4' / 'data'
  assert sorted(os.listdir(data_dir)) == sorted(
      ['process_0-of-2.json', 'process_1-of-2.json', 'commit_success.txt'])

  single = tmp_path / 'single'
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.train', '--config',
                      os.path.join(ROOT, 'configs', 'synthetic.py:runlocal'),
                      '--workdir', str(single), *STEPS], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  single_losses = _losses(r.stdout)
  assert len(single_losses) == 4
  # Same global batches, same model: same losses (the printed 4 decimals).
  assert multi_losses == pytest.approx(single_losses, abs=2e-4), (multi_losses, single_losses)
