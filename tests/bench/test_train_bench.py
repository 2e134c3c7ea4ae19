"""Smoke test of `python -m denseav_jax.bench.train --small` (in a subprocess: one device,
the benchmark's own heap re-exec): both implementations timed, the JSON schema, the two
first-step losses agreeing (same converted weights, same inputs, same random draws), and
the checkpoint blocking figures."""

import json
import subprocess
import sys

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from conftest import ROOT, subprocess_env  # pylint: disable=wrong-import-position

REQUIRED = ('impl', 'batch', 'steps_per_s', 'examples_per_s', 'mfu', 'seconds', 'median_s',
            'times', 'warmup_s', 'compile_s', 'device', 'loss', 'loss_terms',
            'max_abs_loss_diff', 'jax_over_torch', 'save_block_s_sync', 'save_block_s_async')


@pytest.mark.slow
@pytest.mark.subprocess
def test_bench_train_small(tmp_path):
  out = tmp_path / 'bench_train.json'
  # One CPU device; no compilation cache: the benchmark times its compilations.
  env = subprocess_env(devices=None, cache=False)
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.bench.train', '--small', '--repeats',
                      '1', '--save_repeats', '1', '--omp_wait', 'passive', '--ckpt_dir',
                      str(tmp_path), '--out', str(out)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [e['impl'] for e in rows] == ['jax', 'torch']
  for e in rows:
    for key in REQUIRED:
      assert key in e, (key, e)
    assert (e['batch'], e['small'], e['dropout']) == (2, True, 'off')
    assert e['omp_wait_policy'] == 'PASSIVE'
    assert e['steps_per_s'] > 0 and e['examples_per_s'] > 0
    assert e['examples_per_s'] == pytest.approx(2 * e['steps_per_s'])
    assert e['seconds'] > 0 and len(e['times']) == 1
    assert e['mfu'] is None  # CPU.
    assert e['device'].startswith(e['impl'])
    assert e['jax_over_torch'] > 0
    # Same weights, inputs and random draws: the first-step losses agree.
    assert e['max_abs_loss_diff'] < 1e-4 * max(1.0, abs(e['loss'])), e
    assert e['max_abs_term_diff'] < 1e-4, e['term_diffs']
    assert e['save_block_s_sync'] > 0
  jax_row, torch_row = rows
  assert jax_row['compile_s'] > 0 and torch_row['compile_s'] is None
  assert jax_row['loss'] == pytest.approx(torch_row['loss'], abs=1e-4)
  # Every regulariser the batch enables is computed on both sides (silence: too few
  # silent steps at B = 2, skipped by both).
  for term in ('nce', 'tv', 'neg_audio', 'mixup', 'nonneg_pressure', 'cal_balance'):
    assert term in jax_row['loss_terms'] and term in torch_row['loss_terms'], term
  assert jax_row['loss_terms']['neg_audio'] > 0 and jax_row['loss_terms']['mixup'] > 0
  # Checkpoints: async returns before the files are written; sync when they are.
  for key in ('save_block_s_async', 'save_total_s_async', 'save_block_s_sync',
              'step_s_during_async_save'):
    assert jax_row[key] > 0, key
  assert jax_row['save_block_s_async'] <= jax_row['save_total_s_async']
  assert jax_row['state_bytes'] > 0 and torch_row['checkpoint_bytes'] > 0
  assert torch_row['save_block_s_async'] is None
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('denseav_bench_ckpt')]
  assert 'jax/torch' in r.stdout and 'parity:' in r.stdout
