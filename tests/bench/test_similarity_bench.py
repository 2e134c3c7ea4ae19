"""Smoke tests of `python -m denseav_jax.bench.similarity` at tiny sizes (in-process: the
mesh has the suite's 8 fake CPU devices, so the scalable operator runs its ring), and its
flag checks."""

import json

import pytest

from denseav_jax import errors
from denseav_jax.bench import common
from denseav_jax.bench import similarity as bench

TINY = ['--heads', '1', '--dtypes', 'float32', '--repeats', '1', '--channels', '16',
        '--grid', '4', '--steps', '8', '--matmul_size', '128']
REQUIRED = ('impl', 'B', 'K', 'dtype', 'fwd_bwd_s', 'peak_bytes', 'flop_efficiency')


def test_bench_writes_both_impls(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  entries = common.run_with_flags(bench, ['--batch_sizes', '8', *TINY, '--out', str(out)])
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(entries))
  assert sorted(r['impl'] for r in rows) == ['dense', 'scalable']
  for r in rows:
    for key in REQUIRED:
      assert key in r, key
    assert (r['B'], r['K'], r['dtype'], r['skipped']) == (8, 1, 'float32', None)
    for key in ('fwd_s', 'fwd_bwd_s', 'peak_bytes', 'flop_efficiency', 'matmul_flops_per_s'):
      assert r[key] > 0, (r['impl'], key, r[key])
    assert r['speedup_vs_dense'] > 0
    assert r['n_devices'] == 8
  printed = capsys.readouterr().out
  assert 'fwd_bwd_s' in printed and 'scalable' in printed and 'dense' in printed


def test_bench_skips_dense_that_does_not_fit(tmp_path):
  out = tmp_path / 'bench.json'
  common.run_with_flags(bench, ['--batch_sizes', '8,16', *TINY, '--impls', 'dense',
                               '--dense_max_bytes', '1', '--out', str(out)])
  rows = json.loads(out.read_text())
  assert [(r['impl'], r['B']) for r in rows] == [('dense', 8), ('dense', 16)]
  assert all(r['skipped'] and r['fwd_bwd_s'] is None for r in rows)


def test_bench_rejects_unknown_names_in_one_line():
  with pytest.raises(errors.UserError, match=r'^--dtypes=float32,fp8: fp8 not among '
                     r'float32, bfloat16$'):
    common.run_with_flags(bench, ['--dtypes', 'float32,fp8'])
  with pytest.raises(errors.UserError, match=r'^--block takes 2 integers, got 1$'):
    common.run_with_flags(bench, ['--block', '32'])
  # The flags are removed after each run: defining them again works.
  with pytest.raises(errors.UserError, match=r'^--heads=x: comma-separated integers'):
    common.run_with_flags(bench, ['--heads', 'x'])
