"""Model tests: on-device preprocessing (the audio mask, docs/method.md#audio-mask) and the
DenseAV towers.

Compilation is the expensive part on a small CPU, so parameters are mostly drawn with
numpy on top of `jax.eval_shape(model.init, ...)` and shape-only checks use eval_shape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from denseav_jax.parallel import sharding
from denseav_jax.models import audio as audio_lib
from denseav_jax.models import denseav
from denseav_jax.models import image as image_lib
from denseav_jax.models import preprocess
from denseav_jax.trainer import step as step_lib

HUBERT_KERNELS = (10, 3, 3, 3, 3, 2, 2)
HUBERT_STRIDES = (5, 2, 2, 2, 2, 2, 2)


def _config(**overrides):
  config = load_config('synthetic.py', 'runlocal')
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _inputs(config, batch, audio_samples, seed=0):
  rng = np.random.default_rng(seed)
  s = config.input.image_size
  images = jnp.asarray(rng.integers(0, 256, size=(batch, s, s, 3)), jnp.uint8)
  audio = jnp.asarray(rng.normal(size=(batch, audio_samples)), jnp.float32)
  audio_len = jnp.full((batch,), audio_samples, jnp.int32)
  return images, audio, audio_len


def _random_params(model, *args, seed=0, scale=0.2, **kwargs):
  """Random parameters with the model's tree structure, without compiling its init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))['params']
  shapes = nn.meta.unbox(shapes)  # Drop the logical-axis boxes.
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


def _compile(fn, *args):
  """jax.jit(fn) compiled for `args` at XLA optimisation level 0 (halves CPU compile time)."""
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})


def _conv_frames(length, kernels, strides):
  for k, s in zip(kernels, strides):
    length = (length - k) // s + 1
  return length


# ================================================================ preprocessing

def test_resize_linear_hand_computed():
  # 4 -> 2: scale 2, sources 0.5 and 2.5.
  np.testing.assert_allclose(preprocess.resize_linear(jnp.array([1.0, 2.0, 4.0, 8.0]), 2),
                             [1.5, 6.0], rtol=1e-6)
  # 3 -> 5: scale 0.6, sources -0.2 (clamped to 0), 0.4, 1.0, 1.6, 2.2 (clamped to x[2]).
  np.testing.assert_allclose(preprocess.resize_linear(jnp.array([0.0, 10.0, 20.0]), 5),
                             [0.0, 4.0, 10.0, 16.0, 20.0], rtol=1e-6, atol=1e-5)
  # 2 -> 4: sources -0.25, 0.25, 0.75, 1.25.
  np.testing.assert_allclose(preprocess.resize_linear(jnp.array([0.0, 4.0]), 4),
                             [0.0, 1.0, 3.0, 4.0], rtol=1e-6, atol=1e-6)
  # 6 -> 4: scale 1.5, sources 0.25, 1.75, 3.25, 4.75.
  x = jnp.array([0.0, 1.0, 4.0, 9.0, 16.0, 25.0])
  np.testing.assert_allclose(preprocess.resize_linear(x, 4),
                             [0.25, 3.25, 9.0 + 0.25 * 7, 16.0 + 0.75 * 9], rtol=1e-6)
  # Identity size; leading axes are batch axes.
  y = jnp.arange(12.0).reshape(2, 2, 3)
  np.testing.assert_allclose(preprocess.resize_linear(y, 3), y)
  z = preprocess.resize_linear(jnp.stack([jnp.array([1.0, 2.0, 4.0, 8.0]),
                                          jnp.array([0.0, 0.0, 1.0, 1.0])]), 2)
  np.testing.assert_allclose(z, [[1.5, 6.0], [0.0, 1.0]], rtol=1e-6)


def test_audio_mask_threshold_is_0_01():
  # 2 samples (the first valid) -> 2000 steps: step t samples at src = (t - 499.5) / 1000,
  # so its interpolated value is 1 - src = (1499.5 - t) / 1000.
  wave = jnp.ones((1, 2), jnp.float32)
  mask = np.asarray(preprocess.audio_mask(wave, jnp.array([1]), 2000, vad=False))[0]
  soft = np.asarray(preprocess.resize_linear(jnp.array([[1.0, 0.0]]), 2000))[0]
  np.testing.assert_allclose(soft[1489], 0.0105, atol=1e-6)
  np.testing.assert_allclose(soft[1490], 0.0095, atol=1e-6)
  assert mask[1489] and not mask[1490]  # 0.0105 > 0.01 >= 0.0095.
  assert mask[:1490].all() and not mask[1490:].any()


def test_audio_mask_lengths_and_empty_rows():
  # 16 samples -> 4 steps (src = 4t + 1.5): a row with 8 valid samples covers 2 steps.
  wave = jnp.ones((4, 16), jnp.float32)
  lens = jnp.array([16, 8, 0, 0])
  mask = np.asarray(preprocess.audio_mask(wave, lens, 4, vad=False))
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
  # With an rng, empty rows get exactly one random step in range; others are untouched.
  wave = jnp.ones((16, 40), jnp.float32)
  lens = jnp.array([40, 20] + [0] * 14)
  mask = np.asarray(preprocess.audio_mask(wave, lens, 10, vad=False, rng=jax.random.key(3)))
  np.testing.assert_array_equal(mask[0], np.ones(10, bool))
  np.testing.assert_array_equal(mask[1], np.arange(10) < 5)
  assert (mask[2:].sum(axis=1) == 1).all()
  picks = mask[2:].argmax(axis=1)
  assert len(set(picks.tolist())) > 1  # Random, not always step 0.


def test_normalize_waveform():
  rng = np.random.default_rng(0)
  wave = np.stack([rng.normal(3.0, 5.0, 1000), rng.normal(-1.0, 0.01, 1000),
                   rng.uniform(0, 1, 1000)]).astype(np.float32)
  out = np.asarray(preprocess.normalize_waveform(jnp.asarray(wave)))
  np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(axis=1), 1.0, rtol=1e-3)
  # The 1e-7 in the denominator: a row with variance 1e-7 ends at std sqrt(1/2).
  tiny = np.tile(np.array([-1.0, 1.0], np.float32) * np.sqrt(1e-7), 50)[None]
  out = np.asarray(preprocess.normalize_waveform(jnp.asarray(tiny)))
  np.testing.assert_allclose(out.std(), np.sqrt(0.5), rtol=1e-3)


def test_voice_activity():
  frame = 10
  wave = np.zeros((2, 200), np.float32)
  wave[:, 80:110] = np.sin(np.arange(30))[None] * 0.8  # Frames 8, 9, 10.
  wave[:, 150:160] = 1e-4  # Frame 15: -80 dB, far below the 30 dB threshold.
  valid = np.ones((2, 200), np.float32)
  valid[1, 100:] = 0.0  # Row 1: frame 10 onwards is padding.
  wave[1, 170:180] = 5.0  # ... and a loud burst inside the padding must not count.
  act = np.asarray(preprocess.voice_activity(jnp.asarray(wave), jnp.asarray(valid), frame, 30.0))
  assert act.shape == (2, 20)
  want0 = np.zeros(20)
  want0[7:12] = 1.0  # Burst frames 8..10, one frame of dilation each side.
  np.testing.assert_array_equal(act[0], want0)
  want1 = np.zeros(20)
  want1[7:11] = 1.0  # Burst frames 8, 9 (10 is padding), dilated to 7..10.
  np.testing.assert_array_equal(act[1], want1)


def test_audio_mask_with_vad():
  wave = np.zeros((1, 200), np.float32)
  wave[0, 50:70] = 1.0  # Frames 5, 6 loud -> active 4..7 after dilation.
  mask = np.asarray(preprocess.audio_mask(jnp.asarray(wave), jnp.array([200]), 20, vad=True,
                                          vad_frame=10))[0]
  np.testing.assert_array_equal(mask, (np.arange(20) >= 4) & (np.arange(20) <= 7))


# ======================================================================= model

@pytest.mark.parametrize('mixer', ['dwconv', 'attention'])
@pytest.mark.parametrize('seconds', [1.0, 3.0])
def test_output_shapes_logmel(mixer, seconds):
  config = _config(**{'model.image.mixer': mixer})
  model = denseav.build_model(config)
  samples = int(seconds * 16000)
  images, audio, audio_len = _inputs(config, 2, samples)
  out = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.key(0), images, audio, audio_len),
                          images, audio, audio_len))
  c = config.model.code_dim
  g = config.input.image_size // config.model.image.patch_size
  # 25 ms / 10 ms log-mel frames, then a k3/s2 conv (50 Hz); the aligner's two (1,3)/3 convs.
  frames = 1 + (samples - 400) // 160
  t = ((frames - 3) // 2 + 1) // 3 // 3
  assert t == {1.0: 5, 3.0: 16}[seconds]
  assert out['image_feats'].shape == (2, g, g, c) == (2, 16, 16, 16)
  assert out['audio_feats'].shape == (2, 1, t, c)
  assert out['audio_mask'].shape == (2, t) and out['audio_mask'].dtype == jnp.bool_
  assert out['image_cls'].shape == out['audio_cls'].shape == (2, c)
  assert out['cal'].shape == ()


@pytest.mark.parametrize('samples', [16000, 164200, 3333])
def test_hubert_conv_frontend_frame_count(samples):
  tower = audio_lib.AudioTower(frontend='conv', conv_channels=8, conv_kernels=HUBERT_KERNELS,
                               conv_strides=HUBERT_STRIDES, width=16, depth=1, num_heads=2,
                               mlp_dim=16, pos_conv_kernel=16, pos_conv_groups=4)
  wave = jnp.zeros((1, samples))
  out = jax.eval_shape(lambda: tower.apply(tower.init(jax.random.key(0), wave), wave))
  frames = _conv_frames(samples, HUBERT_KERNELS, HUBERT_STRIDES)
  assert frames == {16000: 49, 164200: 512, 3333: 10}[samples]  # HuBERT: 164,200 -> 512.
  assert out.shape == (1, 1, frames, 16)


def test_conv_frontend_model():
  kernels, strides = (4, 3), (3, 2)
  config = _config(**{'model.audio.frontend': 'conv', 'model.audio.conv_kernels': kernels,
                      'model.audio.conv_strides': strides})
  model = denseav.build_model(config)
  images, audio, audio_len = _inputs(config, 2, 1000)
  frames = _conv_frames(1000, kernels, strides)
  assert frames == 166
  out = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.key(0), images, audio, audio_len),
                          images, audio, audio_len))
  assert out['audio_feats'].shape == (2, 1, 166 // 3 // 3, config.model.code_dim)
  # A real forward pass of the conv front end is finite and input-dependent.
  tower = audio_lib.AudioTower(frontend='conv', conv_channels=8, conv_kernels=kernels,
                               conv_strides=strides, width=16, depth=1, num_heads=2,
                               mlp_dim=16, pos_conv_kernel=4, pos_conv_groups=2)
  params = _random_params(tower, audio)
  y = np.asarray(_compile(tower.apply, {'params': params}, audio)({'params': params}, audio))
  assert y.shape == (2, 1, 166, 16) and np.isfinite(y).all()
  assert not np.allclose(y[0], y[1])


def test_forward_values_and_mask():
  config = _config(**{'sim.vad': False})
  model = denseav.build_model(config)
  images, audio, _ = _inputs(config, 3, 16000)
  audio_len = jnp.array([16000, 8000, 0])
  params = _random_params(model, images, audio, audio_len)
  args = ({'params': params}, images, audio, audio_len)
  out = _compile(model.apply, *args)(*args)
  assert out['image_feats'].shape == (3, 16, 16, 16)
  assert out['audio_feats'].shape == (3, 1, 5, 16)
  for k in ('image_feats', 'audio_feats', 'image_cls', 'audio_cls'):
    assert np.isfinite(np.asarray(out[k])).all()
  # Steps sample at 3200 t + 1599.5: 8,000 valid samples -> steps 0..2 (t=2 straddles the
  # end: 0.5 > 0.01); an empty clip gets step 0 (no rng at evaluation).
  np.testing.assert_array_equal(np.asarray(out['audio_mask']),
                                [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_allclose(float(out['cal']), float(jnp.clip(jnp.exp(params['sim_cal_w']),
                                                               0.01, 100.0)), rtol=1e-6)


def _perturb_patch_outputs(mixer, depth, patches):
  """For each (i, j) in `patches`: [g, g] bool of patches whose aligned features change
  when the pixels of patch (i, j) are inverted."""
  config = _config(**{'model.image.mixer': mixer, 'model.image.depth': depth,
                      'input.image_size': 32})
  model = denseav.build_model(config)
  p = config.model.image.patch_size
  images, audio, audio_len = _inputs(config, 1, 8000)
  params = _random_params(model, images, audio, audio_len, seed=1, scale=0.5)
  embed = _compile(lambda x: model.apply({'params': params}, x, method='embed_image')[0],
                   images)
  base = np.asarray(embed(images))[0]
  changed = []
  for i, j in patches:
    block = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p]
    new = np.asarray(embed(images.at[:, i * p:(i + 1) * p, j * p:(j + 1) * p].set(255 - block)))
    changed.append(np.any(new[0] != base, axis=-1))
  return changed


def test_dwconv_image_tower_is_local():
  depth, patches = 2, [(2, 2), (0, 7)]
  for (i, j), changed in zip(patches, _perturb_patch_outputs('dwconv', depth, patches)):
    g = changed.shape[0]
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing='ij')
    dist = np.maximum(np.abs(rows - i), np.abs(cols - j))  # Chebyshev distance in patches.
    # Outside the receptive field (depth x 1 patch) features are bit-identical; inside,
    # they all change (3x3 depthwise mixing per block, no wrap-around at the borders).
    np.testing.assert_array_equal(changed, dist <= depth)
  assert not changed[g - 1, 0]


def test_attention_image_tower_is_global():
  """The contrast case: with attention, a far-away patch's features do change."""
  (changed,) = _perturb_patch_outputs('attention', 1, [(2, 2)])
  assert changed[-1, -1] and changed.all()


def _loss_grads(config, batch_size):
  """Gradients of step_lib.loss_fn at random parameters (compiled at XLA level 0)."""
  model = denseav.build_model(config)
  mesh = sharding.make_mesh(config.mesh)
  images, audio, audio_len = _inputs(config, batch_size, 8000)
  batch = dict(image=images, audio=audio, audio_len=audio_len)
  params = _random_params(model, images, audio, audio_len, scale=0.3)
  grad_fn = _compile(jax.grad(lambda p: step_lib.loss_fn(p, batch, jax.random.key(0), model,
                                                      config, mesh)[0]), params)
  return grad_fn(params)


def _grads(image_grad):
  # The dense score matrix: this checks gradient flow through the model, not the scalable operator.
  return _loss_grads(_config(**{'model.image_grad': image_grad, 'input.image_size': 16,
                                'sim.impl': 'dense'}), 4)


def _norm(tree):
  return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_image_grad_flag():
  frozen = _grads(False)
  for name in ('image_model', 'image_aligner'):
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(frozen[name])), name
  for name in ('audio_model', 'audio_aligner', 'audio_cls', 'sim_cal_w'):
    assert _norm(frozen[name]) > 0, name
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(frozen[name]))
  # Every audio-tower weight matrix takes part in the loss.
  for path, x in jax.tree_util.tree_leaves_with_path(frozen['audio_model']):
    if path[-1].key in ('kernel', 'weight_v'):
      assert np.asarray(x).any(), path
  # With the flag on, the image side does get gradient (so the check above can fail).
  live = _grads(True)
  assert _norm(live['image_model']['patch_embed']) > 0
  assert _norm(live['image_aligner']['layer']) > 0


def test_calibration_is_clamped_exp():
  config = _config(**{'sim.cal_init': 2.5})
  model = denseav.build_model(config)
  variables = model.init(jax.random.key(0), method='calibration')
  np.testing.assert_allclose(float(variables['params']['sim_cal_w']), np.log(2.5), rtol=1e-6)
  np.testing.assert_allclose(float(model.apply(variables, method='calibration')), 2.5,
                             rtol=1e-6)
  for theta, want in ((0.0, 1.0), (1.5, np.exp(1.5)), (-3.0, np.exp(-3.0)),
                      (np.log(0.001), 0.01), (-20.0, 0.01), (np.log(500.0), 100.0)):
    params = dict(variables['params'], sim_cal_w=jnp.float32(theta))
    got = float(model.apply({'params': params}, method='calibration'))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_resize_pos_embed():
  resize = jax.jit(image_lib.resize_pos_embed, static_argnums=1)
  rng = np.random.default_rng(0)
  pos = jnp.asarray(rng.normal(size=(1, 16, 8)), jnp.float32)  # 4 x 4 grid.
  assert image_lib.resize_pos_embed(pos, (4, 4)) is pos
  np.testing.assert_array_equal(resize(pos, (4, 4)), pos)
  for grid in ((2, 2), (6, 6), (3, 5)):
    out = resize(pos, grid)
    assert out.shape == (1, grid[0] * grid[1], 8)
    assert np.isfinite(np.asarray(out)).all()
  # A constant table stays constant; a ramp down the rows stays a ramp (interpolation,
  # not zero padding or a reshape).
  const = jnp.full((1, 16, 3), 2.0)
  np.testing.assert_allclose(resize(const, (6, 6)), 2.0, rtol=1e-5)
  ramp = jnp.asarray(np.repeat(np.arange(4.0), 4)[None, :, None])
  out = np.asarray(resize(ramp, (7, 7))).reshape(7, 7)
  np.testing.assert_allclose(out, out[:, :1] * np.ones((1, 7)), atol=1e-5)  # Constant in w.
  assert np.all(np.diff(out[:, 0]) > 0) and -0.5 < out[0, 0] < 0.5 and 2.5 < out[-1, 0] < 3.5
  with pytest.raises(ValueError):
    image_lib.resize_pos_embed(jnp.zeros((1, 15, 8)), (4, 4))


def test_fast_convs_equal_lax_convs():
  """PatchConv, MelConv, shifted_conv1d and DepthwiseMixer compute the lax convolutions."""
  import flax.linen as fnn
  from denseav_jax.models import audio as audio_lib
  from denseav_jax.models import layers as layers_lib
  key = jax.random.key(0)
  x = jax.random.normal(key, (2, 16, 20, 5))
  mod = layers_lib.PatchConv(7, (4, 4))
  p = fnn.meta.unbox(mod.init(key, x))
  ref = fnn.Conv(7, (4, 4), strides=(4, 4), padding='VALID').apply(p, x)
  np.testing.assert_allclose(mod.apply(p, x), ref, atol=1e-5)
  x1 = jax.random.normal(key, (2, 1, 17, 5))  # 17 steps: the remainder is dropped.
  mod = layers_lib.PatchConv(7, (1, 3))
  p = fnn.meta.unbox(mod.init(key, x1))
  ref = fnn.Conv(7, (1, 3), strides=(1, 3), padding='VALID').apply(p, x1)
  np.testing.assert_allclose(mod.apply(p, x1), ref, atol=1e-5)
  x2 = jax.random.normal(key, (2, 30, 6))
  for kernel, stride in ((3, 2), (10, 5), (2, 2)):  # StridedConv1D: the conv front end's.
    mod = audio_lib.StridedConv1D(4, kernel, stride)
    p = fnn.meta.unbox(mod.init(key, x2))
    ref = fnn.Conv(4, (kernel,), strides=(stride,), padding='VALID').apply(p, x2)
    np.testing.assert_allclose(mod.apply(p, x2), ref, atol=1e-5)
  w = jax.random.normal(jax.random.key(1), (6, 2, 8))  # kernel 6, 3 groups of 2 -> 8 outputs
  x3 = jax.random.normal(key, (2, 11, 6))
  with pytest.raises(Exception):  # 8 outputs do not split into 3 groups.
    layers_lib.shifted_conv1d(x3, w, 3, (3, 3))
  w = jax.random.normal(jax.random.key(1), (6, 2, 9))
  ref = jax.lax.conv_general_dilated(x3, w, (1,), [(3, 3)], dimension_numbers=('NWC', 'WIO', 'NWC'),
                                     feature_group_count=3)
  np.testing.assert_allclose(layers_lib.shifted_conv1d(x3, w, 3, (3, 3)), ref, atol=1e-4)
  tokens = jax.random.normal(key, (2, 20, 4))
  mix = layers_lib.DepthwiseMixer((4, 5))
  p = fnn.meta.unbox(mix.init(key, tokens))
  k = p['params']['dwconv_kernel']
  y = jax.lax.conv_general_dilated(tokens.reshape(2, 4, 5, 4), k, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   feature_group_count=4).reshape(2, 20, 4)
  y = y @ p['params']['proj']['kernel'] + p['params']['proj']['bias']
  np.testing.assert_allclose(mix.apply(p, tokens)[0], y, atol=1e-5)


# ===================================================================== SimPool

def _simpool_ref(params, x, num_heads=1, gamma=None, eps=1e-6):
  """Independent float64 numpy SimPool: x [B, ..., d] -> [B, d]."""
  x = np.asarray(x, np.float64)
  b, d = x.shape[0], x.shape[-1]
  x = x.reshape(b, -1, d)
  n, hd = x.shape[1], d // num_heads
  ln = params['norm_patches']
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  v = (x - mu) / np.sqrt(var + 1e-6) * np.asarray(ln['scale']) + np.asarray(ln['bias'])
  q = x.mean(1) @ np.asarray(params['wq']['kernel'], np.float64)  # [B, d]
  k = v @ np.asarray(params['wk']['kernel'], np.float64)  # [B, N, d]
  out = np.zeros((b, d))
  vmin = v.min()  # Over the whole tensor: every batch element and channel.
  for i in range(b):
    for h in range(num_heads):
      sl = slice(h * hd, (h + 1) * hd)
      logits = k[i, :, sl] @ q[i, sl] / np.sqrt(hd)
      attn = np.exp(logits - logits.max())
      attn /= attn.sum()
      if gamma is None:
        out[i, sl] = attn @ v[i, :, sl]
      else:
        out[i, sl] = (attn @ (v[i, :, sl] - vmin + eps) ** gamma) ** (1 / gamma)
  return out


@pytest.mark.parametrize('gamma,num_heads,shape', [
    (1.25, 1, (3, 2, 5, 8)),  # Audio-like [B, F, T, C].
    (None, 1, (3, 4, 4, 8)),  # Image-like [B, H, W, C].
    (2.0, 2, (2, 7, 8)),  # Tokens [B, N, C], several heads.
    (None, 4, (2, 1, 6, 8)),
])
def test_simpool_matches_numpy_reference(gamma, num_heads, shape):
  from denseav_jax.models import simpool as simpool_lib
  pool = simpool_lib.SimPool(8, num_heads=num_heads, gamma=gamma)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape) * 2.0 + 0.5, jnp.float32)
  params = pool.init(jax.random.key(0), x)['params']
  assert set(params) == {'norm_patches', 'wq', 'wk'}  # No biases (qkv_bias=False).
  assert params['wq']['kernel'].shape == params['wk']['kernel'].shape == (8, 8)
  # torch.nn.Linear-like init: U(-1/sqrt(d), 1/sqrt(d)).
  assert np.abs(np.asarray(params['wq']['kernel'])).max() <= 8 ** -0.5
  # Non-trivial LayerNorm parameters, so the reference checks their use too.
  params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype),
                        params)
  out = pool.apply({'params': params}, x)
  assert out.shape == (shape[0], 8) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _simpool_ref(params, x, num_heads, gamma), rtol=2e-4,
                             atol=2e-5)


def test_simpool_batch_global_min():
  """The release shifts the values by the min over the WHOLE batch (`vv.min()`), so with gamma
  one example's pooled vector depends on the other examples; without gamma it does not."""
  from denseav_jax.models import simpool as simpool_lib
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  # Example 1 gets one extreme token: after LayerNorm it holds the batch's smallest value.
  spike = np.zeros(8, np.float32)
  spike[0] = -50.0
  y = x.at[1, 0, 0].set(jnp.asarray(spike))
  for gamma in (1.25, None):
    pool = simpool_lib.SimPool(8, gamma=gamma)
    params = pool.init(jax.random.key(0), x)
    a, b = pool.apply(params, x), pool.apply(params, y)
    assert not np.allclose(a[1], b[1])  # The changed example itself always changes.
    if gamma is None:
      np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    else:
      assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-3
      # Alone, example 0 pools as with its own min; in the batch, with the global one.
      np.testing.assert_allclose(pool.apply(params, x[:1])[0],
                                 _simpool_ref(params['params'], x[:1], gamma=gamma)[0],
                                 rtol=2e-4, atol=2e-5)
      np.testing.assert_allclose(b[0], _simpool_ref(params['params'], y, gamma=gamma)[0],
                                 rtol=2e-4, atol=2e-5)


def test_simpool_use_beta():
  from denseav_jax.models import simpool as simpool_lib
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  pool = simpool_lib.SimPool(8, use_beta=True)
  params = pool.init(jax.random.key(0), x)['params']
  np.testing.assert_array_equal(params['beta'], [0.0])
  base = pool.apply({'params': params}, x)
  shifted = pool.apply({'params': dict(params, beta=jnp.array([0.5]))}, x)
  np.testing.assert_allclose(shifted, base + 0.5, rtol=1e-6)


def test_denseav_simpool_and_cal_bias():
  config = _config(**{'sim.agg': 'simpool', 'loss.type': 'ce'})
  model = denseav.build_model(config)
  assert model.sim_agg == 'simpool' and model.loss_type == 'ce'
  images, audio, audio_len = _inputs(config, 2, 16000)
  c = config.model.code_dim
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, audio, audio_len))
  assert set(shapes['params']['simpool']) == {'norm_patches', 'wq', 'wk'}
  assert shapes['params']['simpool']['wq']['kernel'].shape == (c, c)
  assert shapes['params']['sim_cal_b'].shape == ()
  out = jax.eval_shape(lambda v: model.apply(v, images, audio, audio_len), shapes)
  assert 'audio_pooled' not in out  # pooling happens where the scored maps are known
  assert out['cal_bias'].shape == ()
  # Real values: the bias starts at 0, and `pool` is the SimPool on any [B, ..., C] map.
  variables = model.init(jax.random.key(0), method='calibration')
  assert float(variables['params']['sim_cal_b']) == 0.0
  params = _random_params(model, images, audio, audio_len)
  params = dict(params, sim_cal_b=jnp.float32(0.0))
  rng = np.random.default_rng(0)
  audio_feats = jnp.asarray(rng.normal(size=(2, 1, 5, c)), jnp.float32)
  image_feats = jnp.asarray(rng.normal(size=(2, 4, 4, c)), jnp.float32)
  for feats in (audio_feats, image_feats):
    got = model.apply({'params': params}, feats, method=model.pool)
    assert got.shape == (2, c)
    np.testing.assert_allclose(got, _simpool_ref(params['simpool'], feats, gamma=1.25),
                               rtol=2e-4, atol=2e-5)
  args = ({'params': params}, images, audio, audio_len)
  out = _compile(model.apply, *args)(*args)
  assert float(out['cal_bias']) == 0.0


def test_denseav_default_has_no_simpool_or_bias():
  config = _config(**{'sim.agg': 'misa', 'loss.type': 'nce'})
  model = denseav.build_model(config)
  images, audio, audio_len = _inputs(config, 2, 16000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, audio, audio_len))
  assert 'simpool' not in shapes['params'] and 'sim_cal_b' not in shapes['params']
  out = jax.eval_shape(lambda v: model.apply(v, images, audio, audio_len), shapes)
  assert out.get('cal_bias') is None
  assert 'audio_pooled' not in out and 'image_pooled' not in out
  with pytest.raises(ValueError):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 4, 4, config.model.code_dim)),
                                         method=model.pool), shapes)
  # Every non-nce loss carries the bias, whatever the aggregator.
  for loss_type in ('bce', 'margin'):
    model = denseav.build_model(_config(**{'loss.type': loss_type}))
    assert 'sim_cal_b' in jax.eval_shape(
        lambda m=model: m.init(jax.random.key(0), method='calibration'))['params']


def test_simpool_global_min_gradient():
  from denseav_jax.models import simpool as simpool_lib
  x = jax.random.normal(jax.random.key(0), (3, 5, 4))
  np.testing.assert_array_equal(simpool_lib.global_min(x), jnp.min(x))
  f = lambda x: jnp.sum(jnp.sin(x) * (x - simpool_lib.global_min(x)))
  g = lambda x: jnp.sum(jnp.sin(x) * (x - jnp.min(x)))
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-6)


def test_simpool_training_gradients():
  """sim.agg='simpool' with a biased loss: the shared SimPool and the calibrator bias train.
  Compiled at XLA level 0, where jnp.min's gradient used to come out non-finite."""
  config = _config(**{'sim.agg': 'simpool', 'loss.type': 'bce', 'sim.impl': 'dense',
                      'input.image_size': 16})
  grads = _loss_grads(config, 8)
  for path, x in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(x)).all(), jax.tree_util.keystr(path)
  for name in ('wq', 'wk', 'norm_patches'):
    assert _norm(grads['simpool'][name]) > 0, name
  assert float(grads['sim_cal_b']) != 0.0
