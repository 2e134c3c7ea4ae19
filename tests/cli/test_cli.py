"""The command-line entry points end to end, in subprocesses on 8 fake devices."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, subprocess_env

pytestmark = pytest.mark.subprocess

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py')
METRIC_KEYS = [
    'speech_prompted/basic_ap', 'speech_prompted/basic_iou', 'speech_prompted/advanced_ap',
    'speech_prompted/advanced_iou', 'speech_prompted/chance_ap', 'sound_prompted/basic_ap',
    'sound_prompted/basic_iou', 'sound_prompted/chance_ap', 'retrieval/a2i_r1',
    'retrieval/a2i_r5', 'retrieval/a2i_r10', 'retrieval/i2a_r1', 'retrieval/i2a_r5',
    'retrieval/i2a_r10', 'retrieval/chance_r1', 'retrieval/chance_r5', 'retrieval/chance_r10',
    'speech_prompted/num_examples', 'sound_prompted/num_examples', 'retrieval/num_examples']


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith('error:')]


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """`train` (4 steps of configs/synthetic.py:runlocal, evaluated at the end), then
  `evaluate` of its last checkpoint: the workdir, both commands' outputs and the training's
  own end-of-run metrics (set aside before `evaluate` writes eval/4 again). A constant
  rate: the step's program then does not depend on num_train_steps, so the resumed run
  below loads it from the compilation cache."""
  workdir = str(tmp_path_factory.mktemp('cli') / 'run')
  train = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir', workdir,
               '--config.num_train_steps=4', '--config.log_every_steps=2',
               '--config.lr_schedule=constant', '--config.eval_num_figures=1')
  assert train.returncode == 0, train.stderr[-3000:]
  with open(os.path.join(workdir, 'eval', '4', 'metrics.json')) as f:
    at_end = json.load(f)
  shutil.rmtree(os.path.join(workdir, 'eval', '4'))
  evaluate = _run('denseav_jax.evaluate', '--config', f'{CONFIG}:runlocal', '--workdir',
                  workdir, '--config.eval_num_figures=1')
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  return dict(workdir=workdir, train=train, evaluate=evaluate, at_end=at_end)


@pytest.mark.slow  # The trained run: a training and an evaluation.
def test_train_logs_and_checkpoints(trained_run):
  r, workdir = trained_run['train'], trained_run['workdir']
  assert 'step 4/4 loss' in r.stdout and 'ex/s | data wait' in r.stdout, r.stdout
  assert '| ETA 0:00:00' in r.stdout, r.stdout
  assert os.listdir(os.path.join(workdir, 'tb'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '4']


@pytest.mark.slow
def test_evaluate_writes_metrics_and_figures(trained_run):
  out = os.path.join(trained_run['workdir'], 'eval', '4')
  with open(os.path.join(out, 'metrics.json')) as f:
    metrics = json.load(f)
  # The same numbers as the training's own evaluation of its last step.
  assert sorted(metrics) == sorted(trained_run['at_end'])
  for k, v in trained_run['at_end'].items():
    assert metrics[k] == pytest.approx(v, abs=1e-5), k
  assert sorted(metrics) == sorted(METRIC_KEYS)
  for k, v in metrics.items():
    if not k.endswith('num_examples'):
      assert isinstance(v, float) and 0.0 <= v <= 1.0, (k, v)
  assert metrics['retrieval/chance_r1'] == 1 / 24 and metrics['retrieval/num_examples'] == 24
  for name in ('speech_prompted_overlay', 'speech_prompted_activation', 'speech_prompted_pca',
               'sound_prompted_overlay', 'sound_prompted_activation', 'sound_prompted_pca'):
    img = np.asarray(Image.open(os.path.join(out, f'{name}.png')))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0


@pytest.mark.slow
def test_train_again_resumes(trained_run, tmp_path):
  """Running train again (on a copy of the run) with more steps resumes from step 4."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_run['workdir'], workdir)
  r = _run('denseav_jax.train', '--config', f'{CONFIG}:runlocal', '--workdir', workdir,
           '--config.num_train_steps=6', '--config.eval_at_end=False',
           '--config.lr_schedule=constant')
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
      'denseav_jax.demo': ['--checkpoint', '--port', '--host'],
      'denseav_jax.compile': ['--topology', '--find_max_batch', '--hand_count'],
  }
  env = subprocess_env()
  procs = {m: subprocess.Popen([sys.executable, '-m', m, '--help'], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in commands}
  for module, flags in commands.items():
    out, err = procs[module].communicate(timeout=120)
    assert procs[module].returncode == 0, (module, err[-2000:])
    for flag in flags:
      assert flag in out, (module, flag, out[:2000])
