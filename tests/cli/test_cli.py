"""The command-line entry points end to end, in subprocesses on 8 fake devices."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py')
METRIC_KEYS = [
    'speech_prompted/basic_ap', 'speech_prompted/basic_iou', 'speech_prompted/advanced_ap',
    'speech_prompted/advanced_iou', 'speech_prompted/chance_ap', 'sound_prompted/basic_ap',
    'sound_prompted/basic_iou', 'sound_prompted/chance_ap', 'retrieval/a2i_r1',
    'retrieval/a2i_r5', 'retrieval/a2i_r10', 'retrieval/i2a_r1', 'retrieval/i2a_r5',
    'retrieval/i2a_r10', 'retrieval/chance_r1', 'retrieval/chance_r5', 'retrieval/chance_r10',
    'speech_prompted/num_examples', 'sound_prompted/num_examples', 'retrieval/num_examples']


def _run(module, *args, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith('error:')]


def test_train_then_evaluate(tmp_path):
  workdir = str(tmp_path / 'run')
  r = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir', workdir,
           '--config.num_train_steps=4', '--config.log_every_steps=2')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'step 4/4 loss' in r.stdout and 'ex/s | data wait' in r.stdout, r.stdout
  assert '| ETA 0:00:00' in r.stdout, r.stdout
  assert os.listdir(os.path.join(workdir, 'tb'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '4']

  r = _run('denseav_jax.evaluate', '--config', f'{CONFIG}:runlocal', '--workdir', workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  out = os.path.join(workdir, 'eval', '4')
  with open(os.path.join(out, 'metrics.json')) as f:
    metrics = json.load(f)
  assert sorted(metrics) == sorted(METRIC_KEYS)
  for k, v in metrics.items():
    if not k.endswith('num_examples'):
      assert isinstance(v, float) and 0.0 <= v <= 1.0, (k, v)
  assert metrics['retrieval/chance_r1'] == 1 / 24 and metrics['retrieval/num_examples'] == 24
  for name in ('speech_prompted_overlay', 'speech_prompted_activation', 'speech_prompted_pca',
               'sound_prompted_overlay', 'sound_prompted_activation', 'sound_prompted_pca'):
    img = np.asarray(Image.open(os.path.join(out, f'{name}.png')))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0

  # Running train again with more steps resumes from step 4.
  r = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir', workdir,
           '--config.num_train_steps=6', '--config.eval_at_end=False')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed from' in r.stdout and 'step 6/6' in r.stdout, r.stdout


def test_config_typo_is_one_line_error(tmp_path):
  r = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir',
           str(tmp_path / 'w'), '--config.no_such_key=1', timeout=120)
  assert r.returncode == 2
  errors = _errors(r.stderr)
  assert len(errors) == 1 and 'no_such_key' in errors[0], r.stderr
  assert 'Traceback' not in r.stderr


def test_missing_workdir_parent_is_one_line_error(tmp_path):
  workdir = str(tmp_path / 'missing' / 'parent' / 'w')
  r = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir', workdir,
           timeout=120)
  assert r.returncode == 2
  errors = _errors(r.stderr)
  assert len(errors) == 1 and 'does not exist' in errors[0] and 'parent' in errors[0], r.stderr
  assert 'Traceback' not in r.stderr
  assert not os.path.exists(os.path.dirname(workdir))


def test_evaluate_without_checkpoint_is_one_line_error(tmp_path):
  r = _run('denseav_jax.evaluate', '--config', f'{CONFIG}:runlocal', '--workdir',
           str(tmp_path), timeout=120)
  assert r.returncode == 2
  errors = _errors(r.stderr)
  assert len(errors) == 1 and 'no checkpoint' in errors[0], r.stderr


def test_every_command_answers_help():
  """--help prints the command's usage and flags and exits 0 (absl's default is 1)."""
  commands = {
      'denseav_jax.train': ['--workdir', '--config', '--distributed', '--cluster'],
      'denseav_jax.evaluate': ['--workdir', '--config'],
      'denseav_jax.predict': ['--checkpoint', '--image', '--audio'],
      'denseav_jax.convert': ['--source', '--input', '--output'],
      'denseav_jax.prepare': ['--dataset', '--raw_dir'],
      'denseav_jax.bench.train': ['--batch', '--out'],
  }
  env = dict(os.environ, PYTHONPATH=ROOT)
  procs = {m: subprocess.Popen([sys.executable, '-m', m, '--help'], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in commands}
  for module, flags in commands.items():
    out, err = procs[module].communicate(timeout=120)
    assert procs[module].returncode == 0, (module, err[-2000:])
    for flag in flags:
      assert flag in out, (module, flag, out[:2000])
