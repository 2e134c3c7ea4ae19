"""Training from the CLI on prepared fixture copies of each training set (Places Audio,
AudioSet, mixed) with the release's transforms and regulariser weights, and evaluation on
the ADE20K prompted sets and Places Audio val."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax.parallel import sharding
from denseav_jax.testing import fixtures
from denseav_jax.data import pipeline
from denseav_jax.data import prepare
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.trainer import step as step_lib

CONFIG = os.path.join(ROOT, 'configs', 'denseav.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  raw = str(tmp_path_factory.mktemp('raw'))
  fixtures.places_audio(raw, num_train=16, num_val=12, seconds=(1.0, 4.0))
  fixtures.audioset(raw, num_train=16, num_val=4, seconds=(1.0, 2.0), faults=['bad_audio'])
  fixtures.ade20k_prompted(raw, 'speech', num=8, faults=False)
  fixtures.ade20k_prompted(raw, 'sound', num=8, faults=False)
  out = str(tmp_path_factory.mktemp('prepared'))
  for name in ('places_audio', 'audioset', 'ade20k_speech_prompted', 'ade20k_sound_prompted'):
    prepare.prepare(name, raw, out, examples_per_shard=8, workers=1, log=lambda *a: None)
  return dict(raw=raw, prepared=out)


def _train(workdir, variant, *overrides):
  """The train command; the runs of the same tiny model share conftest's compilation cache
  (33 s -> 11 s a run measured)."""
  cmd = [sys.executable, '-m', 'denseav_jax.train', '--config', f'{CONFIG}:{variant}',
         '--workdir', str(workdir), *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=900)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize('variant', ['language', 'sound'])  # twohead: test_paper_configs.
def test_train_from_cli_on_prepared_data(data, tmp_path, variant):
  r = _train(tmp_path / 'run', f'{variant},runlocal',
             f'--config.data.prepared_dir={data["prepared"]}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'step 4/4 loss' in r.stdout, r.stdout
  assert 'data: ' in r.stdout
  ckpts = os.listdir(tmp_path / 'run' / 'checkpoints')
  assert '4' in ckpts
  with open(tmp_path / 'run' / 'config.json') as f:
    saved = json.load(f)
  assert saved['data']['neg_audio'] and saved['data']['quad_mixup'] == 0.1
  assert saved['loss']['weights']['neg_audio'] == 0.01
  assert saved['loss']['weights']['mixup'] == 0.1


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_raw_with_bad_files_then_evaluate(data, tmp_path):
  """Read raw (the Places fixture holds damaged files): they are skipped with warnings,
  training finishes; the final evaluation runs on ADE20K prompted sets and Places val."""
  r = _train(tmp_path / 'run', 'language,runlocal',
             f'--config.data.raw_dir={data["raw"]}', '--config.data.max_bad_fraction=0.8',
             '--config.eval_at_end=True', '--config.evals.retrieval_places.num_examples=8',
             '--config.eval_num_figures=1')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'skipping an unusable example' in r.stderr
  assert 'unusable examples skipped' in r.stdout
  with open(tmp_path / 'run' / 'eval' / '4' / 'metrics.json') as f:
    metrics = json.load(f)
  for k in ('speech_prompted/basic_ap', 'speech_prompted/advanced_ap', 'sound_prompted/basic_ap',
            'retrieval_places/a2i_r1', 'retrieval_places/i2a_r10'):
    assert 0.0 <= metrics[k] <= 1.0, k
  assert metrics['retrieval_places/a2i_r10'] == 1.0  # 8 pairs: every match is in the top 10.
  for fig in ('overlay', 'activation', 'pca'):
    assert os.path.exists(tmp_path / 'run' / 'eval' / '4' / f'speech_prompted_{fig}.png')


@pytest.mark.subprocess
def test_bad_fraction_stops_training_with_one_line(data, tmp_path):
  r = _train(tmp_path / 'run', 'language,runlocal',
             f'--config.data.raw_dir={data["raw"]}',
             '--config.data.max_bad_fraction=0.01', '--config.data.bad_fraction_after=8')
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'data.max_bad_fraction' in errors[0], r.stderr[-2000:]
  assert 'Traceback' not in r.stderr


def test_regularisers_see_the_masks(data):
  """neg_audio and mixup (release weights) are computed from the data's pos_mask and
  image_mask: finite, and non-zero on a batch where splicing / mixup happened."""
  c = load_config('denseav.py', 'runlocal')
  c.data.prepared_dir = data['prepared']
  c.data.quad_mixup = 1.0  # Every image a 2 x 2 grid.
  c.batch_size = 8
  batch = next(pipeline.train_iterator(c))
  assert (batch['pos_mask'] < 1).any() and (batch['image_mask'] == 0).any()
  mesh = sharding.make_mesh(c.mesh)
  model = denseav.build_model(c)
  params = params_lib.init_params(c, model, jax.random.key(0))
  _, metrics = jax.jit(lambda p, b: step_lib.loss_fn(p, b, jax.random.key(1), model, c, mesh))(
      params, sharding.put_batch(batch, mesh))
  for k in ('loss_neg_audio', 'loss_mixup'):
    assert np.isfinite(float(metrics[k])) and float(metrics[k]) > 0, k
