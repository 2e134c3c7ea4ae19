"""similarity/heatmap.py: one heat map for evaluation, predict and predict --video.

The same pair's features through the three callers (the prompted-segmentation evaluator's
pair_maps, predict's result, a video frame whose time weights cover every valid step
uniformly) give the same maps, for every aggregator with a volume; the advanced map
is the heads-combined volume's mean over the word's window.
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


def _reference(e, num_heads, head_agg, nonneg, weights):
  """The evaluation's maps restated in numpy (float64): the volume's mean over f, heads
  combined at each step, mean over the weighted steps."""
  a = e['audio'].astype(np.float64).reshape(B, F, T, num_heads, -1)
  v = e['image'].astype(np.float64).reshape(B, H, W, num_heads, -1)
  vol = np.einsum('bftkc,bhwkc->bkhwft', a, v)
  if nonneg:
    vol = np.maximum(vol, 0)
  steps = vol.mean(-2)
  comb = steps.sum(1) if head_agg == 'sum' else steps.max(1)
  w = weights.astype(np.float64)
  den = np.maximum(w.sum(-1), 1e-3)
  return ((comb * w[:, None, None]).sum(-1) / den[:, None, None],
          (steps * w[:, None, None, None]).sum(-1) / den[:, None, None, None])


@pytest.mark.parametrize('head_agg', ['max_elementwise', 'sum'])
@pytest.mark.parametrize('num_heads', [1, 2])
@pytest.mark.parametrize('agg', list(dense.VOLUME_AGGREGATORS))
def test_evaluation_predict_and_video_draw_the_same_map(agg, num_heads, head_agg):
  e = _features()
  config = _config(agg, num_heads, head_agg, nonneg=agg == 'sisa')
  opts = heatmap.Options.from_config(config)

  evaluated = jax.jit(lambda x: segmentation.pair_maps(x, opts))(
      {k: jnp.asarray(e[k]) for k in ('audio', 'image', 'mask')})
  # A video frame reading every step of its clip, each valid one with the same weight.
  frames = jax.jit(video.frame_maps, static_argnums=3)(
      jnp.asarray(e['image']), jnp.asarray(np.swapaxes(e['audio'], 1, 2)),
      jnp.asarray(e['mask'], jnp.float32), opts)
  want, want_heads = _reference(e, num_heads, head_agg, opts.nonneg, e['mask'])
  np.testing.assert_allclose(np.asarray(evaluated['heat']), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(evaluated['heat_heads']), want_heads, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(frames), np.asarray(evaluated['heat']), **TOL)
  for b in range(B):
    emb = {k: e[k][b:b + 1] for k in ('audio', 'image', 'mask')}
    emb['audio_vec'], emb['image_vec'] = e['audio_cls'][b:b + 1], e['image_cls'][b:b + 1]
    out = predict.from_features(config, emb)
    np.testing.assert_allclose(out['combined_heatmap'], np.asarray(evaluated['heat'][b]),
                               **TOL)
    np.testing.assert_allclose(out['heatmaps'], np.asarray(evaluated['heat_heads'][b]),
                               **TOL)
    np.testing.assert_allclose(out['activation'], np.asarray(evaluated['activation'][b]),
                               **TOL)
    # The drawn map is the mean of the saved volume over the audio mask's steps.
    m = e['mask'][b].astype(np.float64)
    sim = out['sim'].astype(np.float64)
    comb = sim.sum(0) if head_agg == 'sum' else sim.max(0)
    np.testing.assert_allclose(out['combined_heatmap'], (comb * m).sum(-1) / m.sum(),
                               rtol=1e-5, atol=1e-5)


def test_the_cls_term_and_mask_silence_leave_the_map_alone():
  """The map has no CLS term and always counts the audio mask's steps: only the score
  follows sim.use_cls and sim.mask_silence."""
  e = _features(1)
  emb = {k: e[k][2:3] for k in ('audio', 'image', 'mask')}
  emb['audio_vec'], emb['image_vec'] = e['audio_cls'][2:3], e['image_cls'][2:3]
  base = predict.from_features(_config('mima', 2, 'max'), emb)
  config = _config('mima', 2, 'max', use_cls=True)
  config.sim.mask_silence = False
  other = predict.from_features(config, emb)
  for key in ('heatmaps', 'combined_heatmap', 'sim', 'activation'):
    np.testing.assert_array_equal(other[key], base[key], err_msg=key)
  assert abs(float(other['score']) - float(base['score'])) > 1e-3


def test_advanced_map_is_the_mean_over_the_word_window():
  e = _features(2)
  opts = heatmap.Options(2, 'sum', False)
  window = np.zeros((B, T), bool)
  window[:, 3:8] = True  # Runs past the end of example 1's sound (5 steps).
  out = segmentation.pair_maps({k: jnp.asarray(e[k]) for k in ('audio', 'image', 'mask')},
                               opts, jnp.asarray(window))
  want, _ = _reference(e, 2, 'sum', False, window)
  np.testing.assert_allclose(np.asarray(out['heat_advanced']), want, rtol=1e-5, atol=1e-5)


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
