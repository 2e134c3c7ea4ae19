"""The evaluation suite: evaluators from config.evals, exact on any mesh and host count,
padding dropped, the numbers equal to a direct one-device computation, the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax.checkpoint import model_io
from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax.similarity import dense
from denseav_jax.evals import embed
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.evals import registry
from denseav_jax.evals import sets
from denseav_jax.evals import suite as suite_lib
from denseav_jax.testing import tolerance
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib

N = 13  # Not a multiple of any evaluation batch below: the last batch is padded.


def _config(n=N, batch_size=4, heads=2, agg='misa'):
  c = load_config('synthetic.py', 'runlocal')
  c.model.num_heads = heads
  c.sim.agg = agg
  if heads == 2:
    c.evals.disentangle = dict(type='disentangle', speech='synthetic:retrieval:speech',
                               sound='synthetic:retrieval:sound')
  for name in c.evals:
    c.evals[name].num_examples = n
  c.eval_batch_size = batch_size
  c.eval_num_figures = 0
  return c


@pytest.fixture(scope='module')
def setup():
  c = _config()
  model = denseav.build_model(c)
  params = jax.device_get(params_lib.init_params(c, model, jax.random.key(3)))
  return c, model, params


def _run(c, model, params, ndev, workdir, devices=None):
  devices = devices or jax.devices()[:ndev]
  mesh = sharding.make_mesh((('data', len(devices)),), devices=devices)
  p = jax.device_put(params, sharding.replicated(mesh))
  return suite_lib.Suite(c, model, mesh).run(p, 7, str(workdir))


# Any run's heat maps, score matrices and head scores (the metrics' continuous inputs) agree
# with the direct computation within RTOL of their largest magnitude (checked on the inputs
# the suite hands to the metric functions); the AP / IoU / recall / ap_dis numbers are then
# compared within the intervals that such a change can move them to (testing/tolerance.py),
# the continuous ones (chance_ap, act_*, num_examples) within TOL.
RTOL = 1e-5
TOL = 2e-5
METRIC_FNS = ('prompted_segmentation_per_class_from_masks', 'retrieval_metrics',
              'disentanglement_metrics')


@pytest.fixture
def recorded(monkeypatch):
  """[(function name, its array arguments)] of the suite's calls of the metric functions."""
  calls = []
  for fn in METRIC_FNS:
    def wrap(*args, _fn=fn, _real=getattr(metrics_lib, fn), **kwargs):
      calls.append((_fn, [np.asarray(a) for a in args if np.ndim(a)]))
      return _real(*args, **kwargs)
    monkeypatch.setattr(metrics_lib, fn, wrap)
  return calls


def _check_run(got, calls, ref):
  """One suite run against the reference: the metric functions' continuous inputs within
  RTOL, the metrics within their intervals (or TOL)."""
  out, inputs, intervals = ref
  assert [fn for fn, _ in calls] == [fn for fn, _, _ in inputs]
  for (_, args), (fn, what, want) in zip(calls, inputs):
    for a, w in zip(args, want):
      if a.dtype.kind == 'f':
        tolerance.assert_inputs_close(a, w, tolerance.tolerance(w, RTOL), f'{fn} ({what})')
      else:
        np.testing.assert_array_equal(a, w, err_msg=f'{fn} ({what})')
  tolerance.assert_metrics_match(got, out, intervals, tol=TOL)
  calls.clear()


@pytest.fixture(scope='module')
def reference(setup):
  return _reference(*setup)


def _reference(c, model, params):
  """The evaluation restated directly: every example embedded at once on one device, the
  heat maps / scores in numpy, then the metric functions.

  Returns the metrics, the metric functions' inputs [(function, what, arrays)] in the
  suite's order (evaluators by name) and the thresholded metrics' intervals for inputs
  within RTOL of these."""
  out, inputs, intervals = {}, [], {}
  emb_fn = embed.tower_fn(model)
  k, sim = c.model.num_heads, c.sim

  def embed_all(dataset, pairs=False):
    ev = sets.EvalSet(c, dataset, N, pairs=pairs)
    exs = [ev.read(i) for i in range(len(ev))]
    e = emb_fn(params, np.stack([x['image'] for x in exs]), np.stack([x['audio'] for x in exs]),
               np.array([x['audio_len'] for x in exs], np.int32))
    return exs, {kk: np.asarray(v, np.float64) for kk, v in e.items()}

  def segmentation(name, what, heat, gt, cls, suffix=''):
    inputs.append(('prompted_segmentation_per_class_from_masks', f'{name} {what}{suffix}',
                   [heat, gt, cls]))
    ivs = tolerance.segmentation_intervals(heat, gt, cls, tolerance.tolerance(heat, RTOL))
    for m in ('ap', 'iou'):
      intervals[f'{name}/{what}_{m}{suffix}'] = ivs[m]
    return metrics_lib.prompted_segmentation_metrics(heat, np.where(gt, cls[:, None, None], 0),
                                                     cls)

  clip_s = c.input.audio_samples / c.input.sample_rate
  for name in ('speech_prompted', 'sound_prompted'):
    exs, e = embed_all(c.evals[name].dataset)
    a = e['audio'].reshape(*e['audio'].shape[:-1], k, -1)  # [N, F, T, K, C/K]
    v = e['image'].reshape(*e['image'].shape[:-1], k, -1)  # [N, H, W, K, C/K]
    mask = e['mask']
    # The release's volume (get_pairwise_sims): the product times the audio mask, so a
    # word window's steps past the audio count as zeros.
    full = np.einsum('nftkc,nhwkc,nt->nkhwft', a, v, mask)
    vol = full.mean(-2)  # [N, K, H, W, T]
    # The heads combined at each frequency and step, then the mean over f.
    comb = (full.sum(1) if sim.head_agg == 'sum' else full.max(1)).mean(-2)
    gt = np.stack([x['gt'] for x in exs])
    cls = np.array([x['prompt_class'] for x in exs])
    windows = {'basic': mask}
    if c.evals[name].get('advanced'):  # The word's window.
      windows['advanced'] = metrics_lib.advanced_windows(
          [x['prompt_start'] for x in exs], [x['prompt_end'] for x in exs], clip_s,
          mask.shape[1], 0.2)
    for kind, w in windows.items():
      w = w.astype(np.float64)
      heat = (comb * w[:, None, None]).sum(-1) / np.maximum(w.sum(-1), 1e-3)[:, None, None]
      m = segmentation(name, kind, heat, gt, cls)
      out[f'{name}/{kind}_ap'], out[f'{name}/{kind}_iou'] = m['ap'], m['iou']
      out[f'{name}/chance_ap'] = m['chance_ap']
    if k > 1:  # Each head alone, on its own basic map.
      w = mask.astype(np.float64)
      for h in range(k):
        heat = (vol[:, h] * w[:, None, None]).sum(-1) / np.maximum(w.sum(-1), 1e-3)[:, None, None]
        m = segmentation(name, 'basic', heat, gt, cls, f'_h{h}')
        out[f'{name}/basic_ap_h{h}'], out[f'{name}/basic_iou_h{h}'] = m['ap'], m['iou']
    out[f'{name}/num_examples'] = float(N)
  exs, e = embed_all('synthetic:retrieval', pairs=True)
  s = dense.scores(jnp.asarray(e['audio']), jnp.asarray(e['mask']),
                        jnp.asarray(e['image']), num_heads=k, agg=sim.agg, head_agg='sum',
                        nonneg=sim.nonneg, mask_silence=sim.mask_silence,
                        audio_cls=jnp.asarray(e['audio_vec']), image_cls=jnp.asarray(e['image_vec']))
  out.update({f'retrieval/{kk}': vv for kk, vv in
              metrics_lib.retrieval_metrics(np.asarray(s)).items()})
  inputs.append(('retrieval_metrics', 'retrieval', [np.asarray(s)]))
  intervals.update({f'retrieval/{kk}': iv for kk, iv in tolerance.retrieval_intervals(
      np.asarray(s), tolerance.tolerance(s, RTOL)).items()})
  out['retrieval/num_examples'] = float(N)
  if k == 2:
    per = []
    for modality in ('speech', 'sound'):
      _, e = embed_all(f'synthetic:retrieval:{modality}', pairs=True)
      # The release's head scores take the volume times the audio mask (its einsum
      # 'bkcft,bkchw,bt'): the same as masking the audio features.
      masked = e['audio'] * e['mask'][:, None, :, None]
      full = dense.scores(jnp.asarray(masked), jnp.asarray(e['mask']),
                               jnp.asarray(e['image']), num_heads=k, agg=sim.agg,
                               head_agg='sum', nonneg=sim.nonneg, per_head=True,
                               mask_silence=sim.mask_silence)  # [N, N, K]
      per.append(np.asarray(full)[np.arange(N), np.arange(N)])  # The matched pairs.
    d = metrics_lib.disentanglement_metrics(*per)
    inputs.append(('disentanglement_metrics', 'disentangle', per))
    intervals.update({f'disentangle/{kk}': iv for kk, iv in tolerance.disentanglement_intervals(
        *per, tolerance.tolerance(np.concatenate(per), RTOL)).items()})
    out['disentangle/ap_dis'], out['disentangle/act_dis'] = d['ap_dis'], d['act_dis']
    for h in range(2):
      for j, kind in enumerate(('speech', 'sound')):
        out[f'disentangle/ap_h{h}_{kind}'] = d['ap'][h, j]
        out[f'disentangle/act_h{h}_{kind}'] = d['act'][h, j]
  inputs.sort(key=lambda call: call[1].split()[0])  # Stable: in-evaluator order kept.
  return out, inputs, intervals


# `reference` (module scope) is set up before `recorded` patches the metric functions.
def test_matches_a_direct_computation_and_writes_metrics(setup, reference, recorded, tmp_path):
  c, model, params = setup
  got = _run(c, model, params, 8, tmp_path)
  _check_run(got, recorded, reference)
  with open(tmp_path / 'eval' / '7' / 'metrics.json') as f:
    assert json.load(f) == pytest.approx(got)


@pytest.mark.slow
def test_same_numbers_on_1_2_4_8_devices_and_any_batch(setup, reference, recorded, tmp_path):
  # Every run against the direct computation: continuous inputs within RTOL, thresholded
  # metrics within their intervals (identical where no value is near a threshold).
  c, model, params = setup
  _check_run(_run(c, model, params, 8, tmp_path / 'a'), recorded, reference)
  for ndev, bs in ((1, 5), (2, 3), (4, 16), (8, 1)):
    c2 = _config(batch_size=bs)
    _check_run(_run(c2, model, params, ndev, tmp_path / f'{ndev}'), recorded, reference)


def test_single_head_simpool_retrieval_is_batch_invariant(recorded, tmp_path):
  # SimPool's value shift uses the min over everything pooled: the whole set, padding and
  # unusable rows replaced by a real example, so any batch and mesh give the same matrix.
  for agg in ('simpool',):
    c = _config(heads=1, agg=agg)
    del c.evals['speech_prompted'], c.evals['sound_prompted']
    model = denseav.build_model(c)
    params = jax.device_get(params_lib.init_params(c, model, jax.random.key(1)))
    a = _run(c, model, params, 8, tmp_path / agg)
    b = _run(_config(heads=1, agg=agg, batch_size=3), model, params, 2, tmp_path / 'b')
    sa, sb = [args[0] for fn, args in recorded if fn == 'retrieval_metrics']  # a's, b's.
    eps = tolerance.tolerance(sa, RTOL)
    tolerance.assert_inputs_close(sb, sa, eps, 'score matrix')
    ivs = {f'retrieval/{k}': iv for k, iv in tolerance.retrieval_intervals(sa, eps).items()}
    tolerance.assert_metrics_match({k: v for k, v in b.items() if k.startswith('retrieval')},
                                   a, ivs)
    assert 0 <= a['retrieval/a2i_r1'] <= 1


def test_evals_flag_subset_merges_metrics_json(setup, tmp_path):
  c, model, params = setup
  mesh = sharding.make_mesh((('data', 8),))
  suite = suite_lib.Suite(c, model, mesh, names=['retrieval'])
  assert suite.names == ['retrieval']
  p = jax.device_put(params, sharding.replicated(mesh))
  suite.run(p, 3, str(tmp_path))
  suite_lib.Suite(c, model, mesh, names=['sound_prompted']).run(p, 3, str(tmp_path))
  got = suite_lib.read_metrics(str(tmp_path), 3)
  assert 'retrieval/a2i_r1' in got and 'sound_prompted/basic_ap' in got
  assert not [f for f in os.listdir(tmp_path / 'eval' / '3') if f.startswith('.tmp')]


def test_due_per_evaluator():
  c = _config()
  c.eval_every_steps = 10
  c.evals.retrieval.every_steps = 4
  entries = registry.entries(c)
  assert entries['retrieval'].every_steps == 4 and entries['sound_prompted'].every_steps == 10
  assert entries['sound_prompted'].batch_size == c.eval_batch_size

  class Fake:
    names = None
  suite = suite_lib.Suite.__new__(suite_lib.Suite)
  suite.eval_at_end = True
  suite.evaluators = [registry.EVALUATORS[e.type](n, e, c, None) for n, e in entries.items()
                      if n != 'disentangle']
  assert suite.due(4, False) == ['retrieval']
  assert suite.due(20, False) == ['retrieval', 'sound_prompted', 'speech_prompted']
  assert suite.due(5, False) == []
  assert len(suite.due(5, True)) == 3


def test_config_errors_name_the_key():
  c = _config()
  c.evals.retrieval.typo = 3
  with pytest.raises(errors.ConfigError, match=r"config.evals.retrieval has unknown key.*typo"):
    registry.entries(c)
  c = _config()
  c.evals.retrieval.type = 'retreival'
  with pytest.raises(errors.ConfigError, match=r"retreival.*not one of"):
    registry.entries(c)
  c = _config()
  c.evals.retrieval.dataset = ''
  with pytest.raises(errors.ConfigError, match='config.evals.retrieval needs dataset'):
    registry.entries(c)
  with pytest.raises(errors.ConfigError, match=r"--evals names \['nope'\]"):
    registry.entries(_config(), ['nope'])
  c = _config(heads=1)
  c.evals.disentangle = dict(type='disentangle', speech='synthetic:retrieval:speech',
                             sound='synthetic:retrieval:sound')
  model = denseav.build_model(c)
  with pytest.raises(errors.ConfigError, match='model.num_heads=1'):
    suite_lib.Suite(c, model, sharding.make_mesh((('data', 8),)))
  with pytest.raises(errors.DataError, match='synthetic:speech_prompted'):
    sets.EvalSet(c, 'synthetic:train')


def test_unusable_examples_beyond_the_allowed_fraction_stop(setup, monkeypatch):
  c, model, params = setup
  mesh = sharding.make_mesh((('data', 8),))
  runner = embed.SetRunner(c, model, mesh)
  ev = sets.EvalSet(c, 'synthetic:retrieval', N, pairs=True)
  real = ev.read
  monkeypatch.setattr(ev, 'read', lambda p: None if p in (2, 5) else real(p))
  p = jax.device_put(params, sharding.replicated(mesh))
  runner.max_bad_fraction = 0.5
  res = runner.run(p, ev, batch_size=4)
  assert list(np.flatnonzero(res.status == -1)) == [2, 5] and res.valid.sum() == N - 2
  runner.max_bad_fraction = 0.1
  with pytest.raises(errors.DataError, match=r'2 of 13 examples are unusable'):
    runner.run(p, ev, batch_size=4)


def _save_model(c, params, directory):
  model_io.save_params(str(directory), params, c)
  return str(directory)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.multiprocess
def test_cli_converted_model_on_two_processes(setup, reference, tmp_path):
  """`evaluate --checkpoint MODEL_DIR` needs no training workdir; 2 processes x 4 devices
  (each reading only its rows) give the direct computation's numbers (within the
  reference's intervals: the subprocesses' inputs are not seen here), and process 0
  draws the figures. (One process on 8 devices: the in-process tests above.)"""
  c, _, params = setup
  c = c.copy_and_resolve_references()
  c.eval_num_figures = 1  # Figures drawn (the files checked here).
  model_dir = _save_model(c, params, tmp_path / 'model')
  two = tmp_path / 'two'
  # The launcher passes --config; a converted model's config.json is read by
  # configs/converted.py. No compilation cache for a multi-process job (conftest).
  env = subprocess_env(devices=4, cache=False, N=2, DEVICES=4, MODULE='denseav_jax.evaluate',
                       CONFIG=f'configs/converted.py:{model_dir}')
  try:
    r = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local_multiprocess.sh'), str(two),
                        '--checkpoint', model_dir], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  except subprocess.TimeoutExpired:
    subprocess.run(['pkill', '-f', str(two)], check=False)
    pytest.fail('two-process evaluation timed out')
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  with open(two / 'eval' / '0' / 'metrics.json') as f:
    m2 = json.load(f)
  for fig in ('overlay', 'activation', 'pca'):
    assert os.path.exists(two / 'eval' / '0' / f'speech_prompted_{fig}.png')
  tolerance.assert_metrics_match(m2, reference[0], reference[2], tol=TOL)


@pytest.mark.subprocess
def test_cli_errors_are_one_line(setup, tmp_path):
  c, _, params = setup
  model_dir = _save_model(c, params, tmp_path / 'model')
  cases = [
      (['--checkpoint', model_dir, '--evals', 'nope'], "--evals names ['nope']"),
      (['--checkpoint', str(tmp_path / 'missing')], 'no such directory'),
      (['--checkpoint', '3'], '--config is'),
      (['--config', os.path.join(ROOT, 'configs', 'synthetic.py') + ':runlocal'],
       'no checkpoint in'),
  ]
  for args, want in cases:
    r = subprocess.run([sys.executable, '-m', 'denseav_jax.evaluate', '--workdir',
                        str(tmp_path / 'w'), *args], cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(lines) == 1 and want in lines[0], r.stderr[-2000:]


def test_enabled_false_leaves_an_evaluator_out():
  c = _config()
  c.evals.sound_prompted.enabled = False
  assert 'sound_prompted' not in registry.entries(c)
  assert 'retrieval' in registry.entries(c)
