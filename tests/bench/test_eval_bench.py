"""Smoke test of `python -m denseav_jax.bench.eval` with the tiny runlocal model (in a
subprocess: the command as run, one device): its table, its JSON and its one-line errors."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env

pytestmark = pytest.mark.subprocess


def _run(*args):
  # One CPU device; no compilation cache: the benchmark times its compilations.
  return subprocess.run([sys.executable, '-m', 'denseav_jax.bench.eval', *args], cwd=ROOT,
                        env=subprocess_env(devices=None, cache=False), capture_output=True,
                        text=True, timeout=600)


def test_bench_eval_small(tmp_path):
  out = tmp_path / 'bench_eval.json'
  r = _run('--config', 'configs/synthetic.py:runlocal', '--num_retrieval', '8',
           '--num_segmentation', '4', '--batch_size', '4', '--out', str(out))
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  e = json.loads(out.read_text())
  assert (e['num_retrieval'], e['num_segmentation'], e['batch_size']) == (8, 4, 4)
  for key in ('retrieval_s', 'segmentation_s', 'peak_bytes', 'retrieval_peak_bytes',
              'segmentation_clips_per_s', 'init_s'):
    assert e[key] > 0, key
  assert 'retrieval/a2i_r1' in e['retrieval_metric']
  assert 'part' in r.stdout and 'process peak' in r.stdout
  assert f'wrote 1 entries to {out}' in r.stdout


def test_bench_eval_errors_are_one_line():
  r = _run('--num_retrieval', '0', '--num_segmentation', '0')
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  assert r.stderr.strip().splitlines()[-1] == 'error: nothing to do: both sizes are 0'
