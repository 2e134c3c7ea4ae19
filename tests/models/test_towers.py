"""Full-size towers, every aligner, LoRA, remat, bf16 and the sharding rules.

Parity with PyTorch lives in test_convert.py; these test our own behaviour.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from denseav_jax.parallel import sharding
from denseav_jax.models import aligners
from denseav_jax.models import audio as audio_lib
from denseav_jax.models import denseav
from denseav_jax.models import image as image_lib
from denseav_jax.models import layers
from denseav_jax.models import lora as lora_lib
from denseav_jax.models import params as params_lib
from denseav_jax.parallel import partitioning
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------ full size

def test_full_size_shapes_and_parameter_counts():
  """ViT-S/8 + HuBERT-Large + aligners: 224^2 and a 10 s clip -> [28,28,384] / [1,56,384]."""
  c = load_config('denseav.py', '')
  model = denseav.build_model(c)
  params = jax.eval_shape(lambda k: params_lib.init_params(c, model, k), jax.random.key(0))
  counts = {k: _count(v) for k, v in params.items()}
  # DINO ViT-S/8 21,670,272 + LoRA (rank 8 on 12 qkv: 12 * (384 + 1152) * 8) = 147,456.
  assert counts['image_model'] == 21_670_272 + 147_456
  assert lora_lib.count(params['image_model'])['lora'] == 147_456
  assert counts['audio_model'] == 315_438_720  # HuBERT-Large incl. masked_spec_embed.
  assert counts['audio_aligner'] == 3_792_896 and counts['image_aligner'] == 296_448
  b = params_lib.dummy_batch(c, 1)
  assert b['audio'].shape == (1, 164_200)
  out = jax.eval_shape(lambda p: model.apply({'params': p}, b['image'], b['audio'],
                                             b['audio_len']), params)
  assert out['image_feats'].shape == (1, 28, 28, 384)
  assert out['audio_feats'].shape == (1, 1, 56, 384)
  assert out['audio_cls'].shape == out['image_cls'].shape == (1, 384)
  assert audio_lib.AudioTower(**audio_lib.HUBERT_VARIANTS['hubert_large']).num_frames(
      164_200) == 512


@pytest.mark.parametrize('variant,grid,width', [('base8', 28, 768), ('small16', 14, 384),
                                                ('base16', 14, 768)])
def test_vit_family(variant, grid, width):
  c = load_config('denseav.py', variant)
  model = denseav.build_model(c)
  b = params_lib.dummy_batch(c, 1)
  params = jax.eval_shape(lambda k: params_lib.init_params(c, model, k), jax.random.key(0))
  out = jax.eval_shape(lambda p: model.apply({'params': p}, b['image'], method='embed_image'),
                       params)
  assert out[0].shape == (1, grid, grid, 384)
  assert params['image_model']['pos_embed'].shape == (1, 1 + grid * grid, width)


def test_hubert_base_layout():
  c = load_config('denseav.py', 'hubert_base')
  model = denseav.build_model(c)
  params = jax.eval_shape(lambda k: params_lib.init_params(c, model, k), jax.random.key(0))
  a = params['audio_model']
  assert 'bias' not in a['conv_layers_0']['conv']  # HuBERT-Base: no conv bias.
  assert 'layer_norm' in a['conv_layers_0'] and 'layer_norm' not in a['conv_layers_1']
  assert _count(a) == 94_371_712  # HuBERT-Base (94.4M) incl. masked_spec_embed.


# ----------------------------------------------------------------- positional resize

def test_bicubic_matrix_matches_keys_kernel():
  """Rows sum to 1; integer scale 2 reproduces torch's bicubic taps (a = -0.75)."""
  m = image_lib.bicubic_matrix(4, 8, 2.0)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  # Output 0 samples x = 0.5 / 2 - 0.5 = -0.25: taps at -2,-1,0,1 (clamped), t = 0.75.
  t = 0.75
  w = image_lib._cubic(np.array([t + 1, t, 1 - t, 2 - t]))
  np.testing.assert_allclose(m[0], [w[0] + w[1] + w[2], w[3], 0, 0], atol=1e-6)
  pos = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 5)), jnp.float32)
  assert image_lib.resize_pos_embed(pos, (4, 4)) is pos  # Same grid: untouched.
  assert image_lib.resize_pos_embed(pos, (3, 6)).shape == (1, 18, 5)


# ------------------------------------------------------------------- aligners

def _aligner_out(kind, x, cls, code_dim=12, heads=6):
  mod = aligners.build(kind, code_dim, heads=heads, name='a')
  p = nn.meta.unbox(mod.init(jax.random.key(0), x, cls))
  p = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(1), v.shape), p)
  return mod, p, mod.apply(p, x, cls)


@pytest.mark.parametrize('kind', aligners.AUDIO_ALIGNERS)
def test_audio_aligners(kind):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 18, 8)), jnp.float32)  # [B, F, T, D]
  cls = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
  _, p, (y, ycls) = _aligner_out(kind, x, cls)
  t = 2 if '3_3' in kind else 18  # Two (1,3)/3 time pools: 18 -> 6 -> 2.
  assert y.shape == (2, 1, t, 12) and ycls.shape == (2, 12), kind
  assert np.isfinite(np.asarray(y)).all()
  names = set(p['params'])  # Release key layout (parameter-free stages have no entry).
  assert names and names <= {f'mod_list_{i}' for i in range(5)}, names


def test_audio_sa_3_3_pool_2_release_semantics():
  """Mean over F, norm of map and CLS, convs, then the SA block sees [CLS; 2 steps]."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 2, 9, 8)), jnp.float32)
  cls = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
  mod, p, (y, ycls) = _aligner_out('audio_sa_3_3_pool_2', x, cls)
  # Frequency bins enter only through their mean.
  x2 = x.at[:, 0].add(1.0).at[:, 1].add(-1.0)
  y2, _ = mod.apply(p, x2, cls)
  np.testing.assert_allclose(y, y2, atol=1e-5)
  # The CLS output depends on the map (joint attention) and vice versa.
  _, c3 = mod.apply(p, x * 2.0 + 1.0, cls)
  assert not np.allclose(c3, ycls)


def test_image_aligners():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 12)), jnp.float32)
  cls = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32)
  for kind in aligners.IMAGE_ALIGNERS:
    mod, p, (y, ycls) = _aligner_out(kind, x, cls)
    assert y.shape == (2, 3, 3, 12) and ycls.shape == (2, 12), kind
  # image_id is the identity; image_idlinear starts as the identity.
  _, _, (y, ycls) = _aligner_out('image_id', x, cls)
  np.testing.assert_array_equal(y, x)
  mod = aligners.build('image_idlinear', 12, name='a')
  p = nn.meta.unbox(mod.init(jax.random.key(0), x, cls))
  y, ycls = mod.apply(p, x, cls)
  np.testing.assert_allclose(y, x, atol=1e-6)
  np.testing.assert_array_equal(ycls, cls)
  # image_linear: the CLS goes through cls_layer *un-normalised* (release quirk).
  mod, p, (y, ycls) = _aligner_out('image_linear', x, cls)
  k = p['params']['cls_layer']
  np.testing.assert_allclose(ycls, cls @ k['kernel'] + k['bias'], rtol=1e-5, atol=1e-5)
  # image_norm normalises the CLS too.
  _, _, (y, ycls) = _aligner_out('image_norm', x, cls)
  assert ycls.shape == (2, 12)
  with pytest.raises(ValueError, match='not one of'):
    aligners.build('image_bogus', 12, name='a')


def test_sa_aligner_pads_channels_to_heads():
  """code_dim 10 with 6 heads: zero-padded to 12 channels in front, cut back to 10."""
  mod = aligners.SelfAttentionAligner(10, num_heads=6)
  x = jnp.ones((1, 1, 4, 10))
  p = nn.meta.unbox(mod.init(jax.random.key(0), x, jnp.ones((1, 10))))
  assert p['params']['block']['norm1']['scale'].shape == (12,)
  y, c = mod.apply(p, x, jnp.ones((1, 10)))
  assert y.shape == (1, 1, 4, 10) and c.shape == (1, 10)


# ----------------------------------------------------------------------- LoRA

def _lora_tower(rank):
  spec = layers.LoraSpec(rank=rank, alpha=16.0, dropout=0.5, targets=('qkv',)) if rank else None
  return image_lib.ImageTower(patch_size=4, width=24, depth=2, num_heads=2, pos_grid=4,
                              lora=spec)


def test_lora_adapters_and_merge():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  base = _lora_tower(0)
  adapted = _lora_tower(4)
  pb = nn.meta.unbox(base.init(jax.random.key(0), images))['params']
  pa = nn.meta.unbox(adapted.init(jax.random.key(0), images))['params']
  qkv = pa['blocks_0']['attn']['qkv']
  assert qkv['lora_a'].shape == (24, 4) and qkv['lora_b'].shape == (4, 72)
  assert not np.asarray(qkv['lora_b']).any()  # B = 0: a fresh adapter changes nothing.
  assert 'lora_a' not in pa['blocks_0']['attn']['proj']  # Only the targets get adapters.
  strip = lambda t: jax.tree.map(lambda x: x, lora_lib._merge_tree(t, 0.0))
  assert jax.tree.structure(strip(pa)) == jax.tree.structure(pb)  # Adapters stripped = base.
  np.testing.assert_allclose(adapted.apply({'params': pa}, images)[0],
                             base.apply({'params': strip(pa)}, images)[0], atol=1e-6)
  # Non-zero B: the merged model (W + A B alpha / r) computes the adapted model exactly
  # at inference, and LoRA dropout acts only in training.
  pa = jax.tree_util.tree_map_with_path(
      lambda path, x: (x + 0.05) if path[-1].key == 'lora_b' else x, pa)
  c = load_config()
  c.model.image.lora.update(rank=4, alpha=16.0)
  merged, c2 = lora_lib.merge({'image_model': pa}, c)
  assert c2.model.image.lora.rank == 0 and c.model.image.lora.rank == 4
  assert lora_lib.count(merged)['lora'] == 0
  want = adapted.apply({'params': pa}, images)[0]
  np.testing.assert_allclose(base.apply({'params': merged['image_model']}, images)[0], want,
                             rtol=1e-5, atol=1e-5)
  train_out = adapted.apply({'params': pa}, images, train=True,
                            rngs={'dropout': jax.random.key(3)})[0]
  assert not np.allclose(train_out, want, atol=1e-4)


# ------------------------------------------------------------ remat, bf16, time mask

def _tiny_audio(**kw):
  return audio_lib.AudioTower(frontend='conv', conv_channels=16, conv_kernels=(10, 3),
                              conv_strides=(5, 2), width=32, depth=2, num_heads=4,
                              mlp_dim=64, pos_conv_kernel=8, pos_conv_groups=4, **kw)


def test_remat_same_values_and_gradients():
  wave = jnp.asarray(np.random.default_rng(0).normal(size=(2, 800)), jnp.float32)
  plain, rem = _tiny_audio(), _tiny_audio(remat='full')
  p = nn.meta.unbox(plain.init(jax.random.key(0), wave))
  loss = lambda m: lambda q: jnp.sum(m.apply(q, wave) ** 2)
  g1 = jax.jit(jax.value_and_grad(loss(plain)))(p)
  g2 = jax.jit(jax.value_and_grad(loss(rem)))(p)
  g3 = jax.jit(jax.value_and_grad(loss(_tiny_audio(remat='dots'))))(p)
  # Rematerialisation reorders float32 sums, and a gradient element sums over the batch and
  # time: compared per parameter against its gradient's norm (elementwise, one of 768 was
  # 4.6e-4 off relative to itself with XLA's older CPU emitters); analytically zero ones
  # (an attention key's bias) against the whole gradient's norm.
  total = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g1[1]))))

  def close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(a), 1e-4 * total), (a, b)

  for value, g in (g2, g3):
    np.testing.assert_allclose(value, g1[0], rtol=1e-6)
    jax.tree.map(close, g1[1], g)
  with pytest.raises(ValueError, match='remat'):
    _tiny_audio(remat='sometimes').init(jax.random.key(0), wave)


def test_bf16_compute_fp32_params():
  c = load_config()
  c.model.dtype = 'bfloat16'
  model = denseav.build_model(c)
  b = params_lib.dummy_batch(c, 2)
  params = params_lib.init_params(c, model, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  run = lambda m: jax.jit(m.apply)({'params': params}, b['image'], b['audio'], b['audio_len'])
  out = run(model)
  assert out['image_feats'].dtype == jnp.bfloat16
  c.model.dtype = 'float32'
  ref = run(denseav.build_model(c))
  err = np.abs(np.asarray(out['audio_feats'], np.float32) - np.asarray(ref['audio_feats']))
  assert err.max() < 0.1 * np.abs(np.asarray(ref['audio_feats'])).max()
  c.model.dtype = 'float16'
  with pytest.raises(ValueError, match='model.dtype'):
    denseav.build_model(c)


def test_time_mask_spans():
  m = np.asarray(audio_lib.time_mask(jax.random.key(0), 64, 512, 0.05, 10, 2))
  assert m.shape == (64, 512)
  counts = m.sum(1)
  assert counts.min() >= 10 and counts.max() <= 30  # 2 or 3 spans of 10, maybe overlapping.
  runs = np.diff(np.concatenate([np.zeros((64, 1)), m, np.zeros((64, 1))], 1), axis=1)
  lengths = np.argwhere(runs[0] < 0)[:, 0] - np.argwhere(runs[0] > 0)[:, 0]
  assert all(L >= 10 and L % 1 == 0 for L in lengths)
  assert not np.asarray(audio_lib.time_mask(jax.random.key(0), 2, 50, 0.0, 10, 2)).any()


def test_training_regularisers_change_outputs_only_in_training():
  wave = jnp.asarray(np.random.default_rng(0).normal(size=(2, 800)), jnp.float32)
  tower = _tiny_audio(dropout=0.1, layerdrop=0.5, mask_time_prob=0.3, mask_time_length=3)
  p = nn.meta.unbox(tower.init(jax.random.key(0), wave))
  apply = jax.jit(tower.apply, static_argnames='train')
  a = apply(p, wave)
  np.testing.assert_array_equal(a, apply(p, wave))  # Deterministic at inference.
  t = apply(p, wave, train=True, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(a, t)


# ------------------------------------------------------------------ sharding rules

def test_mesh_spec_rules():
  mesh = sharding.make_mesh((('data', 2), ('fsdp', 2), ('tensor', 2)))
  rules = partitioning.rules_from_config('fsdp_tp')
  P = jax.sharding.PartitionSpec
  assert partitioning.mesh_spec(('embed', 'mlp'), (1024, 4096), mesh, rules) == P('fsdp', 'tensor')
  # Not divisible -> that dimension stays replicated; a mesh axis is used once.
  assert partitioning.mesh_spec(('embed', 'mlp'), (5, 4096), mesh, rules) == P(None, 'tensor')
  assert partitioning.mesh_spec(('batch', 'length', 'embed'), (8, 5, 16), mesh,
                                rules) == P(('data', 'fsdp'), None, None)
  # The batch axes the dimension does not divide are dropped in order.
  assert partitioning.mesh_spec(('batch',), (2,), mesh, rules) == P('data')
  # Rules naming an absent mesh axis are dropped.
  mesh1 = sharding.make_mesh((('data', -1),))
  assert partitioning.mesh_spec(('embed', 'mlp'), (16, 16), mesh1, rules) == P(None, None)
  assert partitioning.mesh_spec(('batch', 'embed'), (16, 16), mesh1, rules) == P('data', None)
  with pytest.raises(ValueError, match='partitioning'):
    partitioning.rules_from_config('zero3')


@pytest.mark.slow
def test_fsdp_tp_step_equals_data_parallel_and_frozen_backbone():
  """The same two updates under 'dp' on (data 8) and under 'fsdp_tp' on (data 2, fsdp 2,
  tensor 2) (parameters really shard over fsdp and tensor), with a frozen image backbone +
  LoRA (finetune=False): LoRA, the aligner and the audio tower move, the frozen weights
  never do, and the optimizer keeps no Adam moments for them."""
  results = {}
  for rules, mesh_spec in (('dp', (('data', -1),)),
                           ('fsdp_tp', (('data', 2), ('fsdp', 2), ('tensor', 2)))):
    c = load_config()
    c.model.image.update(mixer='attention', finetune=False)
    c.model.image.lora.update(rank=2, targets=('qkv',))
    c.update(partitioning=rules, mesh=mesh_spec, batch_size=8, warmup_steps=1)
    mesh = sharding.make_mesh(c.mesh)
    model = denseav.build_model(c)
    tx = optim.make_optimizer(c)
    state, shardings = state_lib.create_state(c, model, tx, mesh)
    fc1 = state.params['image_model']['blocks_0']['mlp']['fc1']['kernel']
    if rules == 'fsdp_tp':
      assert fc1.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
      assert fc1.addressable_shards[0].data.shape == (fc1.shape[0] // 2, fc1.shape[1] // 2)
    else:
      mask = optim.trainable_mask(state.params, c)
      assert not mask['image_model']['blocks_0']['attn']['qkv']['kernel']
      assert mask['image_model']['blocks_0']['attn']['qkv']['lora_a']
      assert mask['audio_model']['layers_0']['attention']['q_proj']['kernel']
      n_moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
      n_train = sum(p.size for p, t in zip(jax.tree.leaves(state.params),
                                           jax.tree.leaves(mask)) if t)
      assert n_moments < 2 * n_train + 16  # mu + nu of trainable leaves (+ step counts).
    step = step_lib.make_train_step(c, model, tx, mesh, shardings)
    b = {k: np.asarray(v) for k, v in params_lib.dummy_batch(c, 8).items()}
    b['image'] = np.random.default_rng(0).integers(0, 255, b['image'].shape).astype(np.uint8)
    b['audio'] = np.random.default_rng(1).normal(size=b['audio'].shape).astype(np.float32)
    before = jax.device_get(state.params)
    new, _ = step(state, sharding.put_batch(b, mesh))  # lr 0 (warm-up start)...
    new, metrics = step(new, sharding.put_batch(b, mesh))  # ...then a real update.
    results[rules] = (float(metrics['loss']), jax.device_get(new.params))
  np.testing.assert_allclose(results['dp'][0], results['fsdp_tp'][0], rtol=1e-5)
  # Adam normalises each update, so compare parameters with an absolute tolerance.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-5),
               results['dp'][1], results['fsdp_tp'][1])
  moved = jax.tree.map(lambda x, y: bool(np.any(x != y)), before, results['dp'][1])
  qkv = moved['image_model']['blocks_0']['attn']['qkv']
  assert not qkv['kernel'] and not qkv['bias']
  assert not moved['image_model']['patch_embed']['kernel']
  assert qkv['lora_b']  # B moves first (A gets no gradient while B = 0).
  assert moved['audio_model']['layers_0']['attention']['q_proj']['kernel']
  assert moved['image_aligner']['layer']['kernel']
