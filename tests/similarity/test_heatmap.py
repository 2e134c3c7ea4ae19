"""similarity/heatmap.py: one heat map for evaluation, predict and predict --video.

The same pair's features through the three callers (the prompted-segmentation evaluator's
pair_maps, predict's result, a video frame whose time weights cover every valid step
uniformly) give the same maps, for every aggregator with a volume, with and without the
CLS term; the maps are the release's (get_pairwise_sims, then prep_heatmap), restated here
in numpy: the feature product times the audio mask, plus the CLS term with use_cls, the
nonneg clamp, the mean over f, the heads combined, the weighted mean over t. The advanced
map is that over the word's window, whose masked steps count as the volume's zeros.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from denseav_jax.evals import segmentation
from denseav_jax.inference import predict
from denseav_jax.inference import video
from denseav_jax.similarity import dense
from denseav_jax.similarity import heatmap

B, F, T, H, W, C = 3, 2, 9, 4, 5, 8
TOL = dict(rtol=1e-6, atol=1e-6)


def _features(seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((B, T), bool)
  mask[0, :T] = True
  mask[1, :5] = True  # Padding after step 5.
  mask[2, [0, 1, 4, 5, 6]] = True  # A silent gap (sim.vad) and padding.
  return dict(audio=rng.normal(size=(B, F, T, C)).astype(np.float32),
              image=rng.normal(size=(B, H, W, C)).astype(np.float32),
              audio_cls=rng.normal(size=(B, C)).astype(np.float32),
              image_cls=rng.normal(size=(B, C)).astype(np.float32),
              mask=mask)


def _config(agg, num_heads, head_agg, nonneg=False, use_cls=False):
  return ml_collections.ConfigDict(dict(
      model=dict(num_heads=num_heads, code_dim=C),
      sim=dict(agg=agg, head_agg=head_agg, nonneg=nonneg, use_cls=use_cls,
               mask_silence=True)))


def _reference(e, num_heads, head_agg, nonneg, weights, use_cls=False):
  """The release's maps restated in numpy (float64): the volume times the audio mask (plus
  the CLS term), clamped, its mean over f, heads combined at each step, mean over the
  weighted steps (weights: the mask, a word window, ...)."""
  a = e['audio'].astype(np.float64).reshape(B, F, T, num_heads, -1)
  v = e['image'].astype(np.float64).reshape(B, H, W, num_heads, -1)
  vol = np.einsum('bftkc,bhwkc->bkhwft', a, v)
  vol = vol * e['mask'].astype(np.float64)[:, None, None, None, None, :]
  if use_cls:
    ac = e['audio_cls'].astype(np.float64).reshape(B, num_heads, -1)
    vc = e['image_cls'].astype(np.float64).reshape(B, num_heads, -1)
    vol = vol + np.einsum('bkc,bkc->bk', ac, vc)[:, :, None, None, None, None]
  if nonneg:
    vol = np.maximum(vol, 0)
  steps = vol.mean(-2)  # Each head: the mean over f.
  # The heads combined at each frequency and step, then the mean over f (the release's
  # prepare_sims, then get_paired_heatmaps' mean(-2)).
  comb = (vol.sum(1) if head_agg == 'sum' else vol.max(1)).mean(-2)
  w = weights.astype(np.float64)
  den = np.maximum(w.sum(-1), 1e-3)
  return ((comb * w[:, None, None]).sum(-1) / den[:, None, None],
          (steps * w[:, None, None, None]).sum(-1) / den[:, None, None, None])


# Every volume aggregator, K in {1, 2}, both head combinations; the CLS term on for misa and
# paired (sim.use_cls), the clamp on for sisa (sim.nonneg).
CASES = [(agg, k, head_agg, agg in ('misa', 'paired'))
         for agg in dense.VOLUME_AGGREGATORS for k in (1, 2)
         for head_agg in ('max_elementwise', 'sum')]


@pytest.mark.parametrize('agg,num_heads,head_agg,use_cls', CASES)
def test_evaluation_predict_and_video_draw_the_same_map(agg, num_heads, head_agg, use_cls):
  e = _features()
  config = _config(agg, num_heads, head_agg, nonneg=agg == 'sisa', use_cls=use_cls)
  opts = heatmap.Options.from_config(config)
  keys = ('audio', 'image', 'mask', 'audio_cls', 'image_cls')

  evaluated = jax.jit(lambda x: segmentation.pair_maps(x, opts))(
      {k: jnp.asarray(e[k]) for k in keys})
  # A video frame reading every step of its clip, each valid one with the same weight
  # (every step of the timeline carries its clip's CLS).
  frames = jax.jit(video.frame_maps, static_argnums=3)(
      jnp.asarray(e['image']), jnp.asarray(np.swapaxes(e['audio'], 1, 2)),
      jnp.asarray(e['mask'], jnp.float32), opts, jnp.asarray(e['mask'], jnp.float32),
      jnp.asarray(e['image_cls']), jnp.asarray(np.repeat(e['audio_cls'][:, None], T, 1)))
  want, want_heads = _reference(e, num_heads, head_agg, opts.nonneg, e['mask'], use_cls)
  np.testing.assert_allclose(np.asarray(evaluated['heat']), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(evaluated['heat_heads']), want_heads, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(frames), np.asarray(evaluated['heat']), **TOL)
  for b in range(B):
    emb = {k: e[k][b:b + 1] for k in keys}
    emb['audio_vec'], emb['image_vec'] = e['audio_cls'][b:b + 1], e['image_cls'][b:b + 1]
    out = predict.from_features(config, emb)
    np.testing.assert_allclose(out['combined_heatmap'], np.asarray(evaluated['heat'][b]),
                               **TOL)
    np.testing.assert_allclose(out['heatmaps'], np.asarray(evaluated['heat_heads'][b]),
                               **TOL)
    np.testing.assert_allclose(out['activation'], np.asarray(evaluated['activation'][b]),
                               **TOL)
    # Each head's drawn map is the mean of the saved volume over the audio mask's steps.
    m = e['mask'][b].astype(np.float64)
    sim = out['sim'].astype(np.float64)
    np.testing.assert_allclose(out['heatmaps'], (sim * m).sum(-1) / m.sum(), rtol=1e-5,
                               atol=1e-5)


def test_mask_silence_leaves_the_map_alone_and_use_cls_adds_its_term():
  """The map always multiplies by the audio mask and averages over its steps (only the
  score follows sim.mask_silence); sim.use_cls adds the CLS term to the volume, as the
  release's get_pairwise_sims does."""
  e = _features(1)
  emb = {k: e[k][2:3] for k in ('audio', 'image', 'mask', 'audio_cls', 'image_cls')}
  emb['audio_vec'], emb['image_vec'] = e['audio_cls'][2:3], e['image_cls'][2:3]
  base = predict.from_features(_config('misa', 2, 'max'), emb)
  config = _config('misa', 2, 'max')
  config.sim.mask_silence = False
  other = predict.from_features(config, emb)
  for key in ('heatmaps', 'combined_heatmap', 'sim', 'activation'):
    np.testing.assert_array_equal(other[key], base[key], err_msg=key)
  assert abs(float(other['score']) - float(base['score'])) > 1e-3
  # Masked steps are 0 in the volume (a silent gap and the padding of example 2).
  assert np.all(base['sim'][..., ~e['mask'][2]] == 0)
  cls = predict.from_features(_config('misa', 2, 'max', use_cls=True), emb)
  term = (e['audio_cls'][2].reshape(2, -1) * e['image_cls'][2].reshape(2, -1)).sum(-1)
  np.testing.assert_allclose(cls['sim'], base['sim'] + term[:, None, None, None], rtol=1e-5,
                             atol=1e-5)
  assert np.abs(cls['combined_heatmap'] - base['combined_heatmap']).max() > 1e-3


@pytest.mark.parametrize('use_cls', [False, True])
def test_advanced_map_is_the_masked_volume_over_the_word_window(use_cls):
  """Windows that run past the audio (and over a silent gap): their masked steps count as
  the volume's zeros (plus the CLS term), averaged over the window's whole width."""
  e = _features(2)
  opts = heatmap.Options(2, 'sum', False, use_cls)
  window = np.zeros((B, T), bool)
  window[:, 3:8] = True  # Past the end of example 1's sound (5 steps), over 2's gap.
  window[2, 6:] = True  # To the end of the clip, past example 2's sound (7 steps).
  keys = ('audio', 'image', 'mask', 'audio_cls', 'image_cls')
  out = segmentation.pair_maps({k: jnp.asarray(e[k]) for k in keys}, opts,
                               jnp.asarray(window))
  want, _ = _reference(e, 2, 'sum', False, window, use_cls)
  np.testing.assert_allclose(np.asarray(out['heat_advanced']), want, rtol=1e-5, atol=1e-5)
  # Example 1 by hand: the window's 5 steps, 2 of them with sound, the rest the CLS term.
  a = e['audio'][1].astype(np.float64).reshape(F, T, 2, -1)
  v = e['image'][1].astype(np.float64).reshape(H, W, 2, -1)
  steps = np.einsum('ftkc,hwkc->khwt', a, v) / F  # Mean over f.
  cls = (e['audio_cls'][1].reshape(2, -1) * e['image_cls'][1].reshape(2, -1)).sum(-1)
  steps = steps * e['mask'][1] + (cls[:, None, None, None] if use_cls else 0.0)
  np.testing.assert_allclose(np.asarray(out['heat_advanced'][1]),
                             steps.sum(0)[..., 3:8].sum(-1) / 5, rtol=1e-5, atol=1e-5)
  # Not the mean over the window's steps with sound only (what the maps were before).
  inside = steps.sum(0)[..., 3:5].mean(-1)
  assert np.abs(np.asarray(out['heat_advanced'][1]) - inside).max() > 1e-3


def test_video_weights_are_the_mask_times_the_taps():
  taps = video.step_taps(np.array([0.0, 0.5, 1.0]), 0.25, 5)  # [[0, 0, 1], [1, 2, 3], ...]
  mask = np.array([True, True, False, True, True])
  w = video.frame_weights(taps, mask)
  np.testing.assert_allclose(w[0], video.TIME_TAPS)
  np.testing.assert_allclose(w[1], video.TIME_TAPS * [1, 0, 1])
  # All taps on masked steps: the map is 0, as an all-masked example's in evaluation.
  e = _features(3)
  opts = heatmap.Options(1, 'max_elementwise', False)
  steps = jnp.asarray(np.swapaxes(e['audio'], 1, 2)[:, :3])
  heat = video.frame_maps(jnp.asarray(e['image']), steps, jnp.zeros((B, 3)), opts)
  np.testing.assert_array_equal(np.asarray(heat), 0.0)


def test_reduce_heads_and_activation():
  x = jnp.asarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
  np.testing.assert_array_equal(heatmap.reduce_heads(x, 'sum', 1), x.sum(1))
  for head_agg in ('max', 'max_elementwise'):
    np.testing.assert_array_equal(heatmap.reduce_heads(x, head_agg, 1), x.max(1))
  with pytest.raises(ValueError, match='sim.head_agg'):
    heatmap.reduce_heads(x, 'mean', 1)
  vol = jnp.asarray(np.random.default_rng(4).normal(size=(B, 2, H, W, F, T)), jnp.float32)
  per_head, combined = heatmap.activation(vol, 'sum')
  np.testing.assert_allclose(per_head, np.asarray(vol).max(axis=(2, 3)).mean(-2), rtol=1e-6)
  np.testing.assert_allclose(combined, np.asarray(per_head).sum(1), rtol=1e-6)
  _, combined = heatmap.activation(vol, 'max')
  np.testing.assert_allclose(combined, np.asarray(vol).max(axis=(1, 2, 3)).mean(-2),
                             rtol=1e-6)
