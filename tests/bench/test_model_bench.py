"""Smoke test of `python -m denseav_jax.bench.model --small` (in-process, tiny towers, one
timed run): both towers, both passes, both implementations, the JSON schema, and the JAX
and torch forward outputs agreeing (same converted weights)."""

import json

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from denseav_jax.bench import common  # pylint: disable=wrong-import-position
from denseav_jax.bench import model as bench  # pylint: disable=wrong-import-position

REQUIRED = ('impl', 'batch', 'pass', 'examples_per_s', 'tower', 'dtype', 'seconds', 'device',
            'median_s', 'times', 'warmup_s', 'compile_s', 'jax_over_torch')


def test_bench_model_small(tmp_path, capsys):
  out = tmp_path / 'bench_model.json'
  entries = common.run_with_flags(bench, ['--small', '--repeats', '1', '--out', str(out)])
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(entries))
  keys = sorted((r['tower'], r['pass'], r['impl']) for r in rows)
  assert keys == sorted((t, p, i) for t in ('image', 'audio') for p in ('fwd', 'fwd_bwd')
                        for i in ('jax', 'torch'))
  for r in rows:
    for key in REQUIRED:
      assert key in r, (key, r)
    assert r['impl'] in ('jax', 'torch') and r['pass'] in ('fwd', 'fwd_bwd')
    assert (r['batch'], r['dtype'], r['small']) == (2, 'float32', True)
    assert r['seconds'] > 0 and len(r['times']) == 1
    assert r['examples_per_s'] == pytest.approx(2 / r['seconds'])
    assert r['jax_over_torch'] > 0
    assert isinstance(r['device'], str) and r['device'].startswith(r['impl'])
    if r['impl'] == 'jax':
      assert r['compile_s'] > 0
      # Same weights on both sides: the forward dense maps and the losses agree.
      assert r['max_abs_diff'] < 1e-4 * max(1.0, r['max_abs_ref']), r
      if r['pass'] == 'fwd_bwd':
        assert r['loss_rel_diff'] < 1e-4, r
    else:
      assert r['compile_s'] is None
  printed = capsys.readouterr().out
  assert 'jax/torch' in printed and 'max |jax - torch|' in printed


@pytest.mark.subprocess
def test_heap_reexec_sets_tunables_once():
  """`--heap reuse` re-executes the command with bench.heap.TUNABLES; an existing
  GLIBC_TUNABLES is kept (no re-exec)."""
  import subprocess
  import sys
  from denseav_jax.bench import heap
  from conftest import ROOT as root, subprocess_env  # pylint: disable=g-import-not-at-top
  # Prints what it started with, then re-executes as `-m denseav_jax.bench.heap --active`,
  # which prints the GLIBC_TUNABLES the new process started with.
  code = ('import os; from denseav_jax.bench import heap; '
          'print("run", heap.active(), flush=True); '
          'heap.reexec_with_reuse("denseav_jax.bench.heap", ["--active"])')
  env = {k: v for k, v in subprocess_env(devices=None, cache=False).items()
         if k not in ('GLIBC_TUNABLES', heap._MARK)}  # pylint: disable=protected-access
  r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                     timeout=120, cwd=root)
  assert r.returncode == 0, r.stderr[-2000:]
  want = ['run ', heap.TUNABLES] if sys.platform.startswith('linux') else ['run ']
  assert r.stdout.splitlines() == want, r.stdout
  r = subprocess.run([sys.executable, '-c', code],
                     env=dict(env, GLIBC_TUNABLES='glibc.malloc.arena_max=2'),
                     capture_output=True, text=True, timeout=120, cwd=root)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.splitlines() == ['run glibc.malloc.arena_max=2'], r.stdout
