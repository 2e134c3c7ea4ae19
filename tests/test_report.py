"""denseav_jax.report: the comparison table of runs' metrics.json files."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from denseav_jax import cli
from denseav_jax import report


def _metrics(x: float, disentangle: bool = False) -> dict[str, float]:
  """A full metrics.json whose scores grow with x."""
  m = {'speech_prompted/basic_ap': 0.30 + x, 'speech_prompted/basic_iou': 0.20 + x,
       'speech_prompted/advanced_ap': 0.40 + x, 'speech_prompted/advanced_iou': 0.35 + x,
       'speech_prompted/chance_ap': 0.041, 'sound_prompted/basic_ap': 0.25 + x,
       'sound_prompted/basic_iou': 0.15 + x, 'sound_prompted/chance_ap': 0.05}
  for d in ('a2i', 'i2a'):
    m.update({f'retrieval/{d}_r{k}': k / 20 + x for k in (1, 5, 10)})
  m.update({f'retrieval/chance_r{k}': k / 1000 for k in (1, 5, 10)})
  if disentangle:
    m.update({'disentangle/ap_dis': 0.7, 'disentangle/act_dis': 0.6, 'disentangle/extra': 1.0})
  return m


def _write(workdir, step, metrics):
  folder = os.path.join(workdir, 'eval', str(step))
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'metrics.json'), 'w') as f:
    json.dump(metrics, f)
  return folder


def _parse(table: str) -> list[dict[str, str]]:
  """The table's rows as {header: cell} (the legend lines after it dropped)."""
  lines = [l for l in table.splitlines() if l.startswith('|')]
  split = lambda l: [c.strip() for c in l.strip('|').split(' | ')]
  header = split(lines[0])
  return [dict(zip(header, split(l))) for l in lines[2:]]


@pytest.fixture(name='runs_dir')
def fixture_runs_dir(tmp_path):
  """converted/ (eval/0), trained/ (steps 100 and 200; 100 the best a2i_r1), and sweep/ with
  two seeds of lr1 and one run lr2 (only lr2 has the disentanglement keys)."""
  _write(tmp_path / 'converted', 0, _metrics(0.10))
  _write(tmp_path / 'trained', 100, _metrics(0.20))
  _write(tmp_path / 'trained', 200, {**_metrics(0.0), 'retrieval/a2i_r1': 0.01})
  os.makedirs(tmp_path / 'trained' / 'eval' / 'notes')  # Not a step: ignored.
  _write(tmp_path / 'sweep' / 'lr1_seed0', 100, _metrics(0.0))
  _write(tmp_path / 'sweep' / 'lr1_seed0', 200, _metrics(0.02))
  _write(tmp_path / 'sweep' / 'lr1-seed1', 200, _metrics(0.05))
  _write(tmp_path / 'sweep' / 'lr2', 200, _metrics(0.01, disentangle=True))
  os.makedirs(tmp_path / 'sweep' / 'logs')  # No eval/: not a run.
  return tmp_path


def test_columns_percent_bold_and_missing(runs_dir):
  runs = report.load_runs([str(runs_dir / 'converted'), str(runs_dir / 'trained')])
  assert [(r.label, r.step) for r in runs] == [('converted', 0), ('trained', 200)]
  table = report.make_table(runs)
  rows = _parse(table)
  assert list(rows[0]) == [
      'run', 'step', 'speech_prompted mAP', 'speech_prompted mIoU', 'sound_prompted mAP',
      'sound_prompted mIoU', 'retrieval A→I R@1', 'retrieval A→I R@5', 'retrieval A→I R@10',
      'retrieval I→A R@1', 'retrieval I→A R@5', 'retrieval I→A R@10']
  conv, trained = rows
  assert conv['step'] == '0' and trained['step'] == '200'
  # The advanced speech metrics and the basic sound metrics, in percent, best in bold.
  assert conv['speech_prompted mAP'] == '**50.0**' and trained['speech_prompted mAP'] == '40.0'
  assert conv['speech_prompted mIoU'] == '**45.0**'
  assert conv['sound_prompted mAP'] == '**35.0**' and conv['sound_prompted mIoU'] == '**25.0**'
  assert conv['retrieval A→I R@1'] == '**15.0**' and trained['retrieval A→I R@1'] == '1.0'
  assert conv['retrieval I→A R@10'] == '**60.0**'
  assert 'speech_prompted: advanced mAP and mIoU' in table
  assert 'sound_prompted: basic mAP and mIoU' in table
  assert 'Chance: speech_prompted mAP 4.1; sound_prompted mAP 5.0; retrieval R@1 0.1' in table
  assert 'chance' not in table.splitlines()[0]

  # A run without a metric shows – ; ties are all bold; basic speech metrics when the run has
  # no advanced ones.
  basic = {k: v for k, v in _metrics(0.1).items() if 'advanced' not in k}
  basic['retrieval/a2i_r1'] = 0.15  # Ties converted's.
  run = report.Run('basic', 'x', 5, basic)
  both = report.Run('dis', 'y', 6, {'disentangle/ap_dis': 0.5, 'disentangle/act_dis': 0.25})
  rows = _parse(report.make_table([run, both, runs[0]]))
  assert rows[0]['speech_prompted mAP'] == '–' and rows[2]['speech_prompted mAP'] == '**50.0**'
  assert rows[0]['retrieval A→I R@1'] == rows[2]['retrieval A→I R@1'] == '**15.0**'
  assert rows[1]['disentangle ap_dis'] == '**50.0**' and rows[0]['disentangle act_dis'] == '–'
  only_basic = report.make_table([run])
  assert _parse(only_basic)[0]['speech_prompted mAP'] == '**40.0**'  # basic_ap 0.3 + 0.1.
  assert 'speech_prompted: basic mAP and mIoU' in only_basic


def test_step_selection(runs_dir):
  trained = str(runs_dir / 'trained')
  assert report.load_runs([trained])[0].step == 200
  assert report.load_runs([trained], step='latest')[0].step == 200
  run = report.load_runs([trained], step=100)[0]
  assert run.step == 100 and run.metrics['speech_prompted/advanced_ap'] == pytest.approx(0.6)
  assert report.load_runs([trained], step='100')[0].step == 100
  best = report.load_runs([trained], step='best', best_metric='retrieval/a2i_r1')[0]
  assert best.step == 100
  best = report.load_runs([trained], step='best', best_metric='sound_prompted/chance_ap')[0]
  assert best.step == 200  # Ties: the later step.
  with pytest.raises(cli.UserError, match=r'--step=300: .*trained \(steps there: 100, 200\)'):
    report.load_runs([trained], step=300)
  with pytest.raises(cli.UserError, match='--step=foo: use a step number, latest or best'):
    report.load_runs([trained], step='foo')
  with pytest.raises(cli.UserError, match='needs --best_metric'):
    report.load_runs([trained], step='best')
  with pytest.raises(cli.UserError, match='--best_metric=nope: no evaluation in .*trained'):
    report.load_runs([trained], step='best', best_metric='nope')
  # An evaluation folder or a metrics.json is used as given, labelled by its run.
  folder = str(runs_dir / 'trained' / 'eval' / '100')
  runs = report.load_runs([folder, os.path.join(folder, 'metrics.json')], step=200)
  assert [(r.label, r.step) for r in runs] == [('trained', 100)] * 2


def test_sweep_expansion_and_seed_groups(runs_dir):
  runs = report.load_runs([str(runs_dir / 'sweep')])
  assert [(r.label, r.step) for r in runs] == [
      ('lr1-seed1', 200), ('lr1_seed0', 200), ('lr2', 200)]
  rows = report.group_runs(runs)
  assert [(r.label, len(r.runs)) for r in rows] == [('lr1', 2), ('lr2', 1)]
  assert rows[0].values['speech_prompted/advanced_ap'] == pytest.approx(0.435)
  assert rows[0].spread['speech_prompted/advanced_ap'] == pytest.approx(0.015)  # Population.
  table = report.make_table(runs)
  lr1, lr2 = _parse(table)
  assert lr1['run'] == 'lr1' and lr1['seeds'] == '2' and lr2['seeds'] == '1'
  assert lr1['speech_prompted mAP'] == '**43.5 ± 1.5**' and lr2['speech_prompted mAP'] == '41.0'
  assert lr1['disentangle ap_dis'] == '–' and lr2['disentangle ap_dis'] == '**70.0**'
  assert 'disentangle extra' not in table and 'mean ± population std' in table
  # Per-seed best steps differ: the step cell lists them.
  runs = report.load_runs([str(runs_dir / 'sweep')], step='best',
                          best_metric='retrieval/i2a_r5', labels=['S'])
  assert [r.label for r in runs] == ['S/lr1-seed1', 'S/lr1_seed0', 'S/lr2']
  assert _parse(report.make_table(runs))[0]['step'] == '200'
  mixed = [report.Run('a_seed0', 'p', 1, {'retrieval/a2i_r1': 0.2}),
           report.Run('a_seed1', 'q', 2, {'retrieval/a2i_r1': 0.4, 'retrieval/i2a_r1': 0.1}),
           report.Run('a_seed2', 'r', 3, {'retrieval/a2i_r1': 0.3})]
  row = _parse(report.make_table(mixed))[0]
  assert row['step'] == '1, 2, 3' and row['seeds'] == '3'
  assert row['retrieval A→I R@1'] == '**30.0 ± 8.2**'
  assert row['retrieval I→A R@1'] == '**10.0 ± 0.0 (1/3)**'  # One seed of three has it.
  # No grouping on request: one row per run.
  assert len(_parse(report.make_table(mixed, group=None))) == 3


def test_bad_inputs(tmp_path):
  with pytest.raises(cli.UserError, match='no eval/STEP/metrics.json in .*empty'):
    os.makedirs(tmp_path / 'empty' / 'eval')
    report.load_runs([str(tmp_path / 'empty')])
  with pytest.raises(cli.UserError, match='nor in its subfolders'):
    report.load_runs([str(tmp_path / 'empty' / 'eval')])
  with pytest.raises(cli.UserError, match='does not exist'):
    report.load_runs([str(tmp_path / 'nope')])
  folder = _write(tmp_path / 'r', 1, {})
  path = os.path.join(folder, 'metrics.json')
  for text, what in (('{"a/b": 0.5,', 'not valid JSON (Expecting'), ('', 'empty file'),
                     ('[1, 2]', 'expected a JSON object of metrics, got a list'),
                     ('{"a/b": "x"}', "the value of 'a/b' is not a number: 'x'")):
    with open(path, 'w') as f:
      f.write(text)
    with pytest.raises(cli.UserError) as e:
      report.load_runs([str(tmp_path / 'r')])
    assert str(e.value).startswith(f'{path}: ') and what in str(e.value), str(e.value)
  with pytest.raises(cli.UserError, match='--labels has 1 names for 2 DIRs'):
    report.load_runs(['a', 'b'], labels=['x'])


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'denseav_jax.report', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli(runs_dir):
  out = runs_dir / 'table.md'
  r = _run(str(runs_dir / 'converted'), str(runs_dir / 'sweep'), '--out', str(out),
           '--labels=conv,sw')
  assert r.returncode == 0, r.stderr
  assert out.read_text() == r.stdout and not os.path.exists(f'{out}.tmp')
  rows = _parse(r.stdout)
  assert [row['run'] for row in rows] == ['conv', 'sw/lr1', 'sw/lr2']
  assert rows[0]['speech_prompted mAP'] == '**50.0**'

  r = _run(str(runs_dir / 'trained'), '--step', 'best', '--best_metric', 'retrieval/a2i_r1')
  assert r.returncode == 0 and _parse(r.stdout)[0]['step'] == '100', r.stderr

  bad = _write(runs_dir / 'bad', 3, {})
  with open(os.path.join(bad, 'metrics.json'), 'w') as f:
    f.write('{"x": 1,}')
  os.makedirs(runs_dir / 'none' / 'eval')
  for args, message in (
      ([str(runs_dir / 'bad')], f'{bad}/metrics.json: not valid JSON'),
      ([str(runs_dir / 'none')], f'no eval/STEP/metrics.json in {runs_dir}/none'),
      ([str(runs_dir / 'trained'), '--step=7'], '--step=7: no eval/7/metrics.json'),
      ([], 'no DIR given')):
    r = _run(*args)
    assert r.returncode == 2 and not r.stdout, (args, r.stdout)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], r.stderr

  r = _run('--help')
  assert r.returncode == 0 and '--best_metric' in r.stdout and 'DIR1 DIR2' in r.stdout
