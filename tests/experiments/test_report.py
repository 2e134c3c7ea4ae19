"""denseav_jax.report: the comparison table of runs' metrics.json files."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from denseav_jax import errors
from denseav_jax.experiments import report


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
  with pytest.raises(errors.UserError, match=r'--step=300: .*trained \(steps there: 100, 200\)'):
    report.load_runs([trained], step=300)
  with pytest.raises(errors.UserError, match='--step=foo: use a step number, latest or best'):
    report.load_runs([trained], step='foo')
  with pytest.raises(errors.UserError, match='needs --best_metric'):
    report.load_runs([trained], step='best')
  with pytest.raises(errors.UserError, match='--best_metric=nope: no evaluation in .*trained'):
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
  with pytest.raises(errors.UserError, match='no eval/STEP/metrics.json in .*empty'):
    os.makedirs(tmp_path / 'empty' / 'eval')
    report.load_runs([str(tmp_path / 'empty')])
  with pytest.raises(errors.UserError, match='nor in its subfolders'):
    report.load_runs([str(tmp_path / 'empty' / 'eval')])
  with pytest.raises(errors.UserError, match='does not exist'):
    report.load_runs([str(tmp_path / 'nope')])
  folder = _write(tmp_path / 'r', 1, {})
  path = os.path.join(folder, 'metrics.json')
  for text, what in (('{"a/b": 0.5,', 'not valid JSON (Expecting'), ('', 'empty file'),
                     ('[1, 2]', 'expected a JSON object of metrics, got a list'),
                     ('{"a/b": "x"}', "the value of 'a/b' is not a number: 'x'")):
    with open(path, 'w') as f:
      f.write(text)
    with pytest.raises(errors.UserError) as e:
      report.load_runs([str(tmp_path / 'r')])
    assert str(e.value).startswith(f'{path}: ') and what in str(e.value), str(e.value)
  with pytest.raises(errors.UserError, match='--labels has 1 names for 2 DIRs'):
    report.load_runs(['a', 'b'], labels=['x'])


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'denseav_jax.report', *args], cwd=ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)


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


# Sweeps: a sweep.json and runs DIR/LABEL_seedN.

def _sweep(root, points, seeds=(0, 1), metric='', runs=None):
  """A sweep directory: `points` [(label, coords)], `runs` {folder: metrics (or None: the
  folder without an evaluation)} at step 100."""
  os.makedirs(root, exist_ok=True)
  spec = {'config': 'c.py', 'base': 'b.py', 'seeds': list(seeds), 'metric': metric,
          'description': '', 'points': [{'label': l, 'coords': c, 'overrides': {}}
                                        for l, c in points]}
  with open(os.path.join(root, 'sweep.json'), 'w') as f:
    json.dump(spec, f)
  for folder, metrics in (runs or {}).items():
    if metrics is None:
      os.makedirs(os.path.join(root, folder, 'checkpoints'))
    else:
      _write(os.path.join(root, folder), 100, metrics)
  return str(root)


PRODUCT = [(f'{a}-{h}', {'agg': a, 'heads': h}) for a in ('misa', 'cavmae') for h in ('k1', 'k2')]


@pytest.fixture(name='product_sweep')
def fixture_product_sweep(tmp_path):
  """misa/cavmae x k1/k2, seeds 0 and 1 (cavmae-k2 seed 1 unfinished), and a stray run."""
  runs = {}
  for i, (label, _) in enumerate(PRODUCT):
    for seed in (0, 1):
      runs[f'{label}_seed{seed}'] = _metrics(0.1 * i + 0.02 * seed)
  runs['cavmae-k2_seed1'] = None
  runs['old_seed0'] = _metrics(0.5)
  return _sweep(tmp_path / 'sw', PRODUCT, metric='speech_prompted/basic_ap', runs=runs)


def test_sweep_rows_follow_the_points(product_sweep, capsys):
  [sweep] = report.load_dirs([product_sweep])
  assert 'old_seed0 is not a run of a point of' in capsys.readouterr().err
  assert sweep.axes == ['agg', 'heads'] and sweep.metric == 'speech_prompted/basic_ap'
  assert [(r.label, len(r.runs), r.planned) for r in sweep.rows] == [
      ('misa-k1', 2, 2), ('misa-k2', 2, 2), ('cavmae-k1', 2, 2), ('cavmae-k2', 1, 2)]
  assert sweep.rows[1].coords == {'agg': 'misa', 'heads': 'k2'}
  assert [r.label for r in report.load_runs([product_sweep])][:3] == [
      'misa-k1_seed0', 'misa-k1_seed1', 'misa-k2_seed0']
  table = report.make_table(sweep.rows, metrics=[sweep.metric])
  rows = _parse(table)
  assert list(rows[0])[:7] == ['run', 'agg', 'heads', 'step', 'seeds',
                               'speech_prompted/basic_ap', 'speech_prompted mAP']
  assert [(r['run'], r['agg'], r['heads'], r['seeds']) for r in rows] == [
      ('misa-k1', 'misa', 'k1', '2'), ('misa-k2', 'misa', 'k2', '2'),
      ('cavmae-k1', 'cavmae', 'k1', '2'), ('cavmae-k2', 'cavmae', 'k2', '1/2')]
  assert rows[0]['speech_prompted/basic_ap'] == '31.0 ± 1.0'  # 0.30 + (0, 0.02).
  assert rows[1]['speech_prompted mAP'] == '51.0 ± 1.0'
  # The best mean is bold (cavmae-k2: its one finished seed, 0.7).
  assert rows[3]['speech_prompted mAP'] == '**70.0**'
  assert rows[3]['retrieval A→I R@1'] == '**35.0**'
  assert 'seeds N/M' in table
  rule = table.splitlines()[1].strip('|').split('|')  # run and axes left, numbers right.
  assert [c[-1] for c in rule[:6]] == ['-', '-', '-', ':', ':', ':']
  # A single-seed sweep: rows keep the point's label (no _seed0).
  single = _sweep(os.path.dirname(product_sweep) + '/one', PRODUCT[:2], seeds=(0,),
                  runs={'misa-k1_seed0': _metrics(0.0), 'misa-k2_seed0': _metrics(0.1)})
  rows = _parse(report.make_table(report.load_dirs([single], labels=['S'])[0].rows))
  assert [(r['run'], r['seeds']) for r in rows] == [('S/misa-k1', '1'), ('S/misa-k2', '1')]
  assert rows[1]['speech_prompted mAP'] == '**50.0**'


def test_sweep_unfinished_runs(tmp_path):
  points = [('a', {'x': 'a'}), ('b', {'x': 'b'}), ('c', {'x': 'c'})]
  path = _sweep(tmp_path / 'sw', points, runs={'a_seed0': _metrics(0.0), 'b_seed0': None})
  [sweep] = report.load_dirs([path])
  rows = _parse(report.make_table(sweep.rows))
  assert [(r['run'], r['step'], r['seeds']) for r in rows] == [
      ('a', '100', '1/2'), ('b (not finished)', '–', '0/2'), ('c (not finished)', '–', '0/2')]
  assert rows[1]['speech_prompted mAP'] == '–' and rows[0]['speech_prompted mAP'] == '**40.0**'
  # A run evaluated at other steps than --step N counts as not finished there.
  _write(tmp_path / 'sw' / 'b_seed1', 200, _metrics(0.1))
  rows = _parse(report.make_table(report.load_dirs([path], step=200)[0].rows))
  assert [r['run'] for r in rows] == ['a (not finished)', 'b', 'c (not finished)']
  with pytest.raises(errors.UserError, match=f'no finished run in the sweep {tmp_path}/sw: .* '
                     'at step 300'):
    report.load_dirs([path], step=300)
  empty = _sweep(tmp_path / 'empty', points, runs={'a_seed0': None})
  with pytest.raises(errors.UserError, match=f'no finished run in the sweep {empty}'):
    report.load_runs([empty])
  for text, what in (('{"points": []}', 'non-empty "points" list'),
                     ('{"points": [{"coords": {}}]}', 'point 0 has no usable "label"'),
                     ('{"points": [{"label": "a", "coords": {"x": 1}}]}', '"coords" must map'),
                     ('{"points": [{"label": "a"}, {"label": "a"}]}', 'two points are'),
                     ('{"points": [{"label": "a"}], "seeds": "0"}', '"seeds" must be'),
                     ('{"points": ', 'not valid JSON')):
    with open(tmp_path / 'empty' / 'sweep.json', 'w') as f:
      f.write(text)
    with pytest.raises(errors.UserError, match=f'{empty}/sweep.json: .*{what}'):
      report.load_dirs([empty])


def test_metrics_columns_and_chance_ratio(product_sweep):
  rows = report.load_dirs([product_sweep])[0].rows
  keys = ['speech_prompted/basic_iou', 'speech_prompted/advanced_ap']
  table = _parse(report.make_table(rows, metrics=keys))
  # A key the paper columns show already is not repeated.
  assert list(table[0])[5:7] == ['speech_prompted/basic_iou', 'speech_prompted mAP']
  assert table[3]['speech_prompted/basic_iou'] == '**50.0**'
  assert table[0]['speech_prompted/basic_iou'] == '21.0 ± 1.0'
  only = _parse(report.make_table(rows, metrics=keys, paper=False))
  assert list(only[0])[5:] == keys and only[0]['speech_prompted/advanced_ap'] == '41.0 ± 1.0'
  # × chance: the prompted APs over their chance AP, mean ± std over the seeds' ratios.
  ratio = report.make_table(rows, metrics=['speech_prompted/basic_ap'], chance_ratio=True)
  r0, _, _, r3 = _parse(ratio)
  assert r0['speech_prompted/basic_ap (× chance)'] == '7.6 ± 0.2×'  # (0.30, 0.32) / 0.041.
  assert r0['speech_prompted mAP (× chance)'] == '10.0 ± 0.2×'
  assert r3['sound_prompted mAP (× chance)'] == '**11.0×**'  # 0.55 / 0.05.
  assert r0['speech_prompted mIoU'] == '36.0 ± 1.0' and 'multiples of the chance AP' in ratio
  # No chance AP in a run: its ratio is missing; evaluators without one keep percent.
  runs = [report.Run('a', 'p', 1, {'e/basic_ap': 0.5, 'e/chance_ap': 0.1, 'f/basic_ap': 0.3,
                                   'e/basic_ap_h1': 0.2, 'e/basic_iou': 0.4}),
          report.Run('b', 'q', 1, {'e/basic_ap': 0.5})]
  a, b = _parse(report.make_table(runs, metrics=['e/basic_ap_h1'], chance_ratio=True))
  assert a['e mAP (× chance)'] == '**5.0×**' and b['e mAP (× chance)'] == '–'
  assert a['e/basic_ap_h1 (× chance)'] == '**2.0×**' and a['e mIoU'] == '**40.0**'
  assert a['f mAP'] == '**30.0**'


def test_plots(tmp_path, product_sweep):
  from PIL import Image
  import numpy as np
  [sweep] = report.load_dirs([product_sweep])
  keys = report.plot_keys(sweep.rows, [sweep.metric])
  assert [k for _, k in keys] == ['speech_prompted/basic_ap', 'speech_prompted/advanced_ap',
                                  'sound_prompted/basic_ap', 'retrieval/a2i_r1']
  values, series = report.axis_series(sweep.rows, sweep.axes, 'heads')
  assert values == ['k1', 'k2'] and list(series) == ['agg=misa', 'agg=cavmae']
  written = report.plot_sweep(sweep, keys, str(tmp_path / 'plots'), chance_ratio=True)
  assert [(a, os.path.basename(p)) for a, p in written] == [('agg', 'agg.png'),
                                                            ('heads', 'heads.png')]
  for _, path in written:
    image = np.asarray(Image.open(path).convert('L'))
    assert image.shape[0] > 300 and image.shape[1] > 800 and image.std() > 10, image.shape
  # A union: each point sets one axis; a plot shows only the points on its axis.
  points = [('all', {}), ('nostft', {'stft': 'off'}), ('nohop', {'hop': 'off'}),
            ('hop2', {'hop': '2'})]
  union = _sweep(tmp_path / 'union', points, seeds=(0,),
                 runs={f'{l}_seed0': _metrics(0.1 * i) for i, (l, _) in enumerate(points)})
  [sweep] = report.load_dirs([union])
  assert sweep.axes == ['stft', 'hop']
  values, series = report.axis_series(sweep.rows, sweep.axes, 'hop')
  assert values == ['off', '2'] and {k: [r.label for r in v] for k, v in series.items()} == {
      'other axes unset': ['nohop', 'hop2']}
  rows = _parse(report.make_table(sweep.rows))
  assert [(r['run'], r['stft'], r['hop']) for r in rows] == [
      ('all', '', ''), ('nostft', 'off', ''), ('nohop', '', 'off'), ('hop2', '', '2')]
  written = report.plot_sweep(sweep, report.plot_keys(sweep.rows), str(tmp_path / 'u'), 'x_')
  assert [os.path.basename(p) for _, p in written] == ['x_stft.png', 'x_hop.png']


def test_cli_sweep(tmp_path, product_sweep):
  out = tmp_path / 'report' / 'table.md'
  os.makedirs(out.parent)
  r = _run(product_sweep, '--out', str(out), '--chance_ratio')
  assert r.returncode == 0, r.stderr
  assert out.read_text() == r.stdout and 'old_seed0 is not a run' in r.stderr
  rows = _parse(r.stdout)
  assert [row['run'] for row in rows] == ['misa-k1', 'misa-k2', 'cavmae-k1', 'cavmae-k2']
  assert list(rows[0])[5] == 'speech_prompted/basic_ap (× chance)'  # The sweep's metric.
  assert r.stdout.rstrip().endswith('![sw: agg](agg.png)\n\n![sw: heads](heads.png)')
  assert sorted(os.listdir(out.parent)) == ['agg.png', 'heads.png', 'table.md']

  plots = tmp_path / 'plots'
  r = _run(product_sweep, str(tmp_path / 'sw'), '--labels=a,b', '--out', str(out),
           '--plots', str(plots), '--metrics', 'retrieval/i2a_r10', '--nopaper_columns')
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(plots)) == ['a_agg.png', 'a_heads.png', 'b_agg.png', 'b_heads.png']
  assert '![a: agg](../plots/a_agg.png)' in out.read_text()
  assert list(_parse(r.stdout)[0])[5:] == ['speech_prompted/basic_ap', 'retrieval/i2a_r10']

  r = _run(product_sweep)  # No --out: no plots.
  assert r.returncode == 0 and '.png' not in r.stdout + r.stderr, r.stderr
  _write(tmp_path / 'plain', 1, _metrics(0.0))
  for args, message in (
      ([product_sweep, '--metrics', 'nope/x'], "--metrics: no run has 'nope/x' (keys: "),
      ([str(tmp_path / 'plain'), '--plots', str(plots)], '--plots: no DIR is a sweep'),
      ([str(tmp_path / 'plain'), '--nopaper_columns'], '--nopaper_columns leaves no column'),
      ([_sweep(tmp_path / 'e', PRODUCT)], f'no finished run in the sweep {tmp_path}/e')):
    r = _run(*args)
    assert r.returncode == 2 and not r.stdout, (args, r.stdout)
    lines = [l for l in r.stderr.strip().splitlines() if not l.startswith('warning: ')]
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], r.stderr
  # A sweep metric no run has: a warning, no column.
  other = _sweep(tmp_path / 'o', PRODUCT[:1], seeds=(0,), metric='nope/ap',
                 runs={'misa-k1_seed0': _metrics(0.0)})
  r = _run(other, '--plots', str(tmp_path / 'op'))
  assert r.returncode == 0 and "no finished run has the sweep metric 'nope/ap'" in r.stderr
  assert 'nope' not in r.stdout and '.png' not in r.stdout  # Links go to --out only.
  assert sorted(os.listdir(tmp_path / 'op')) == ['agg.png', 'heads.png']
  r = _run('--help')
  assert r.returncode == 0 and '--chance_ratio' in r.stdout and '--plots' in r.stdout


def test_union_around_a_shared_point(tmp_path):
  """configs/ablations/study.py's shape: one point on every axis, the others varying one
  axis each. Each axis's plot is one series through the shared point, and --by_axis gives a
  table per axis with the shared point on each."""
  points = [('default', {'agg': 'misa', 'heads': 'k1'}), ('agg=cavmae', {'agg': 'cavmae'}),
            ('agg=sisa', {'agg': 'sisa'}), ('heads=k2', {'heads': 'k2'})]
  root = _sweep(tmp_path / 'study', points, seeds=(0,), metric='speech_prompted/basic_ap',
                runs={f'{l}_seed0': _metrics(0.1 * (i + 1)) for i, (l, _) in enumerate(points)})
  [sweep] = report.load_dirs([root])
  values, series = report.axis_series(sweep.rows, sweep.axes, 'agg')
  assert values == ['misa', 'cavmae', 'sisa']
  assert {k: [r.label for r in v] for k, v in series.items()} == {
      'heads=k1': ['default', 'agg=cavmae', 'agg=sisa']}
  values, series = report.axis_series(sweep.rows, sweep.axes, 'heads')
  assert values == ['k1', 'k2'] and list(series) == ['agg=misa']
  out = tmp_path / 't.md'
  r = _run(root, '--by_axis', '--out', str(out))
  assert r.returncode == 0, r.stderr
  sections = r.stdout.split('\n### ')
  assert [s.splitlines()[0] for s in sections[1:]] == ['study: agg', 'study: heads']
  agg_rows = _parse(sections[1].split('\n', 2)[2])
  assert [(row['run'], row['agg']) for row in agg_rows] == [
      ('default', 'misa'), ('agg=cavmae', 'cavmae'), ('agg=sisa', 'sisa')]
  assert 'heads' not in agg_rows[0]  # Only the section's own axis.
  cells = [row['speech_prompted/basic_ap'] for row in agg_rows]
  assert cells[2].startswith('**') and not any(c.startswith('**') for c in cells[:2])
  heads_rows = _parse(sections[2].split('\n', 2)[2])
  assert [row['run'] for row in heads_rows] == ['default', 'heads=k2']
