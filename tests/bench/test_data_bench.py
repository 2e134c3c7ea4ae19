"""Smoke test of `python -m denseav_jax.bench.data` at tiny sizes: its table and JSON."""

import json

from denseav_jax.bench import common
from denseav_jax.bench import data as bench


def test_bench_data_writes_every_input(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  entries = common.run_with_flags(
      bench, ['--small', '--examples', '12', '--batch', '4', '--batches', '1', '--repeats',
              '1', '--profile_examples', '4', '--train_steps', '1', '--workdir',
              str(tmp_path / 'work'), '--out', str(out)])
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(entries))
  assert [r['dataset'] for r in rows] == list(bench.DATASETS)
  for r in rows:
    assert r['pipeline_examples_per_s'] > 0 and r['train_step_examples_per_s'] > 0
    assert r['stages_ms']['read_decode'] > 0 and r['stages_ms']['batching'] >= 0
    assert all(v >= 0 for v in r['stages_ms'].values()), r['stages_ms']
    if r['dataset'] != 'synthetic':
      assert r['stages_ms']['augment'] > 0 and r['transforms']['neg_audio']
  printed = capsys.readouterr().out
  assert 'pipeline/s' in printed and 'places_audio_prepared' in printed
