"""Weight conversion (denseav_jax.conversion; CLI denseav_jax.convert): parity with PyTorch
at fp32 on random weights.

Towers: our ImageTower vs a DINO-layout ViT (testing/torch_models.DinoViT), our AudioTower vs
transformers' HubertModel (Large and Base shapes, reduced depth). Full model: a small
PyTorch reference of the released DenseAV pieces (peft-style LoRA on qkv, the
`image_linear` and `audio_sa_3_3_pool_2` aligners, the learned audio CLS;
denseav_jax/testing/torch_denseav.py, shared with the training benchmark), whose state dict
in the released key layout is converted and compared feature by feature and on the B x B
score matrix. Then the key-layout variants, the error listing and the CLI round trip.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import flax.linen as nn_linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
from torch import nn  # pylint: disable=g-import-not-at-top,wrong-import-position

from conftest import ROOT, load_config, subprocess_env  # pylint: disable=wrong-import-position
from denseav_jax.checkpoint import model_io  # pylint: disable=wrong-import-position
from denseav_jax import errors  # pylint: disable=wrong-import-position
from denseav_jax import io  # pylint: disable=wrong-import-position
from denseav_jax.conversion import convert as convert_lib  # pylint: disable=wrong-import-position
from denseav_jax.conversion import denseav as denseav_conv  # pylint: disable=wrong-import-position
from denseav_jax.conversion import dino as dino_conv  # pylint: disable=wrong-import-position
from denseav_jax.conversion import hparams as hparams_conv  # pylint: disable=wrong-import-position
from denseav_jax.conversion import hubert as hubert_conv  # pylint: disable=wrong-import-position
from denseav_jax.conversion import mapping  # pylint: disable=wrong-import-position
from denseav_jax.conversion import torch_io  # pylint: disable=wrong-import-position
from denseav_jax.similarity import dense  # pylint: disable=wrong-import-position
from denseav_jax.testing import torch_denseav as td  # pylint: disable=wrong-import-position
from denseav_jax.testing import torch_models as tm  # pylint: disable=wrong-import-position
from denseav_jax.models import aligners as aligners_lib  # pylint: disable=wrong-import-position
from denseav_jax.models import audio as audio_lib  # pylint: disable=wrong-import-position
from denseav_jax.models import denseav  # pylint: disable=wrong-import-position
from denseav_jax.models import image as image_lib  # pylint: disable=wrong-import-position
from denseav_jax.models import lora as lora_lib  # pylint: disable=wrong-import-position
from denseav_jax.models import preprocess  # pylint: disable=wrong-import-position

TOL = 1e-4
IMG_P, AUD_P = td.IMG_P, td.AUD_P
torch.set_num_threads(2)


def _compile(fn, *args):
  """jax.jit(fn) compiled at XLA optimisation level 0 (about half the CPU compile time)."""
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})


def _perturb(module: nn.Module, seed: int) -> nn.Module:
  """Moves every parameter off its init: 1-D ones (LayerNorm scales, biases) by N(0, 0.1^2),
  zero-initialised tables (CLS, positions) to N(0, 0.02^2), the rest by N(0, 0.01^2)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      if p.dim() == 1:
        p.add_(0.1 * torch.randn(p.shape, generator=g))
      elif not p.abs().max():
        p.copy_(0.02 * torch.randn(p.shape, generator=g))
      else:
        p.add_(0.01 * torch.randn(p.shape, generator=g))
  return module.eval()


def _maxdiff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _report(name: str, **diffs):
  print(f'[parity] {name}: ' + ', '.join(f'{k} max|diff|={v:.2e}' for k, v in diffs.items()))
  for k, v in diffs.items():
    assert v <= TOL, (name, k, v)


# ------------------------------------------------------------------------------ HuBERT

@pytest.mark.parametrize('variant', ['large', 'base'])
def test_hubert_parity(variant):
  hf = _perturb(tm.hubert(variant, num_layers=2), seed=1)
  params = hubert_conv.tower_params(hf.state_dict())
  fields = hubert_conv.tower_fields(params)
  assert fields.pop('lora_rank') == 0
  expect = dict(audio_lib.HUBERT_VARIANTS[f'hubert_{variant}'], depth=2)
  for k, v in expect.items():
    assert fields[k] == v, (k, fields[k], v)
  tower = audio_lib.AudioTower(**fields, ln_eps=1e-4)
  wave = np.random.default_rng(0).normal(size=(2, 16000)).astype(np.float32)
  wave = np.array(preprocess.normalize_waveform(jnp.asarray(wave)))  # writable copy
  fn = _compile(lambda p, w: tower.apply({'params': p}, w), params, wave)
  ours = np.asarray(fn(params, wave))[:, 0]  # [B, T, D]
  with torch.no_grad():
    ref = hf(torch.from_numpy(wave)).last_hidden_state.numpy()
  # pylint: disable-next=protected-access
  hf_frames = int(hf._get_feat_extract_output_lengths(torch.tensor(16000)))
  assert ours.shape == ref.shape == (2, hf_frames, fields['width'])
  assert tower.num_frames(16000) == hf_frames == 49
  _report(f'HuBERT-{variant} (2 layers, 1 s)', features=_maxdiff(ours, ref))


def test_hubert_keys_variants():
  """'hubert.' prefix + lm_head (HubertForCTC), both weight-norm spellings, a missing
  masked_spec_embed (filled), and the HF folder reader with config.json."""
  hf = tm.hubert('base', num_layers=1)
  sd = hf.state_dict()
  want = hubert_conv.tower_params(sd)
  assert 'masked_spec_embed' in want  # Filled: HF omits it without masking.
  pc = 'encoder.pos_conv_embed.conv.'
  old = {k.replace('parametrizations.weight.original0', 'weight_g')
         .replace('parametrizations.weight.original1', 'weight_v'): v for k, v in sd.items()}
  assert pc + 'weight_g' in old and pc + 'weight_v' in old
  ctc = {'hubert.' + k: v for k, v in old.items()}
  ctc['lm_head.weight'] = torch.zeros(32, 768)
  ctc['lm_head.bias'] = torch.zeros(32)
  got = hubert_conv.tower_params(ctc)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  np.testing.assert_array_equal(got['pos_conv_embed']['weight_g'],
                                sd[pc + 'parametrizations.weight.original0'].numpy().reshape(-1))
  np.testing.assert_array_equal(got['pos_conv_embed']['weight_v'],
                                sd[pc + 'parametrizations.weight.original1'].numpy()
                                .transpose(2, 1, 0))
  with pytest.raises(errors.ConversionError, match='encoder.layers.0.foo'):
    hubert_conv.tower_params({**sd, 'encoder.layers.0.foo': torch.zeros(3)})


# --------------------------------------------------------------------------------- ViT

@pytest.fixture(scope='module')
def vit():
  torch.manual_seed(0)
  return _perturb(tm.DinoViT(patch_size=8, width=384, depth=2, num_heads=6, eps=1e-4), seed=2)


@pytest.mark.parametrize('size,token_type', [((224, 224), 'token'), ((160, 224), 'token'),
                                             ((224, 224), 'key')])
def test_vit_parity(vit, size, token_type):
  params = dino_conv.tower_params(vit.state_dict())
  fields = dino_conv.tower_fields(params)
  assert fields == dict(patch_size=8, width=384, depth=2, num_heads=6, pos_grid=28,
                        mixer='attention', mlp_ratio=4, lora_rank=0)
  fields.pop('lora_rank')
  tower = image_lib.ImageTower(**fields, ln_eps=1e-4, token_type=token_type)
  x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  fn = _compile(lambda p, x: tower.apply({'params': p}, x), params, x)
  dense, cls = fn(params, x)
  vit.token_type = token_type
  try:
    with torch.no_grad():
      ref_dense, ref_cls = vit(torch.from_numpy(x).permute(0, 3, 1, 2))
  finally:
    vit.token_type = 'token'
  ref_dense = ref_dense.permute(0, 2, 3, 1).numpy()
  assert dense.shape == ref_dense.shape == (2, size[0] // 8, size[1] // 8, 384)
  _report(f'ViT-S/8 (2 blocks) {size[0]}x{size[1]} {token_type}',
          dense=_maxdiff(dense, ref_dense), cls=_maxdiff(cls, ref_cls.numpy()))


def test_vit_base16_parity():
  """The B-width family member (768 wide, 12 heads, patch 16) converts and matches too."""
  torch.manual_seed(1)
  ref = _perturb(tm.DinoViT(patch_size=16, width=768, depth=2, num_heads=12, eps=1e-4), seed=4)
  params = dino_conv.tower_params(ref.state_dict())
  fields = dino_conv.tower_fields(params)
  assert (fields['patch_size'], fields['width'], fields['num_heads'], fields['pos_grid']) == (
      16, 768, 12, 14)
  fields.pop('lora_rank')
  tower = image_lib.ImageTower(**fields, ln_eps=1e-4)
  x = np.random.default_rng(2).normal(size=(2, 224, 224, 3)).astype(np.float32)
  dense, cls = _compile(lambda p, x: tower.apply({'params': p}, x), params, x)(params, x)
  with torch.no_grad():
    ref_dense, ref_cls = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert dense.shape == (2, 14, 14, 768)
  _report('ViT-B/16 (2 blocks) 224x224', dense=_maxdiff(dense, ref_dense.permute(0, 2, 3, 1)),
          cls=_maxdiff(cls, ref_cls.numpy()))


def test_dino_checkpoint_layouts(vit):
  """A DINO training checkpoint: nested under 'teacher', 'module.backbone.' prefixes, a
  projection head (dropped)."""
  sd = vit.state_dict()
  want = dino_conv.tower_params(sd)
  nested = {'teacher': {'module.backbone.' + k: v for k, v in sd.items()}, 'epoch': 3}
  nested['teacher']['module.head.mlp.0.weight'] = torch.zeros(4, 384)
  flat = {k: v.numpy() for k, v in torch_io.unwrap(nested).items()}
  jax.tree.map(np.testing.assert_array_equal, dino_conv.tower_params(flat), want)
  with pytest.raises(errors.ConversionError) as e:
    dino_conv.tower_params({k: v for k, v in sd.items() if k != 'blocks.1.norm2.bias'})
  assert 'blocks.1.norm2.bias' in str(e.value)


# ----------------------------------------------------- released DenseAV (torch reference)

def _released_model() -> nn.Module:
  """The released model's pieces at reduced depth (one ViT block with LoRA, one HuBERT-Large
  layer with masked_spec_embed), every weight moved off its init, calibrator w = 2."""
  model = td.TorchDenseAV(image=dict(depth=1), audio=dict(num_layers=1, mask_time_prob=0.05),
                          seed=3)
  _perturb(model, seed=4)
  with torch.no_grad():
    model.sim_cal_w.fill_(math.log(2.0))
  return model


@pytest.fixture(scope='module')
def released():
  model = _released_model()
  sd = model.released_state_dict()
  config, notes = hparams_conv.infer_config(sd, load_config('denseav.py', None))
  assert not notes, notes
  config.model.dtype = 'float32'  # Parity at fp32 (configs/denseav.py computes in bf16).
  return model, sd, config


def test_released_key_layout(released):
  _, sd, config = released
  shapes = {k: tuple(v.shape) for k, v in sd.items()}
  assert shapes[IMG_P + 'blocks.0.attn.qkv.base_layer.weight'] == (1152, 384)
  assert shapes[IMG_P + 'blocks.0.attn.qkv.lora_A.default.weight'] == (8, 384)
  assert shapes[IMG_P + 'blocks.0.attn.qkv.lora_B.default.weight'] == (1152, 8)
  assert shapes[IMG_P + 'pos_embed'] == (1, 785, 384)
  assert shapes[AUD_P + 'masked_spec_embed'] == (1024,)
  assert shapes[AUD_P + 'encoder.pos_conv_embed.conv.parametrizations.weight.original1'] == (
      1024, 64, 128)
  assert shapes['audio_aligner.mod_list.2.layer.weight'] == (384, 1024, 1, 3)
  assert shapes['audio_aligner.mod_list.4.block.attn.qkv.weight'] == (1152, 384)
  assert shapes['image_aligner.layer.weight'] == (384, 384, 1, 1)
  assert shapes['sim_cal.w'] == (1,)
  m = config.model
  assert (m.image.depth, m.image.lora.rank, m.audio.depth, m.audio.width) == (1, 8, 1, 1024)
  assert m.audio.norm_first and m.audio.feat_extract_norm == 'layer'


def test_denseav_parity(released):
  model_t, sd, config = released
  params = denseav_conv.model_params(sd, config)
  rng = np.random.default_rng(5)
  b, n = 3, 16000
  images = rng.integers(0, 256, size=(b, 224, 224, 3)).astype(np.uint8)
  audio_len = np.array([n, 9600, 4000], np.int32)
  wave = rng.normal(size=(b, n)).astype(np.float32)
  wave[np.arange(n)[None] >= audio_len[:, None]] = 0.0
  model = denseav.build_model(config)
  v = {'params': params}
  img_fn = _compile(lambda v, x: model.apply(v, x, method=model.embed_image), v, images)
  aud_fn = _compile(lambda v, a, l: model.apply(v, a, l, method=model.embed_audio),
                    v, wave, audio_len)
  img, img_cls = img_fn(v, images)
  aud, aud_cls, mask = aud_fn(v, wave, audio_len)
  scores = dense.scores(aud, mask, img, num_heads=config.model.num_heads,
                             agg=config.sim.agg, head_agg=config.sim.head_agg)
  ref = model_t(images, wave, audio_len)
  assert img.shape == (b, 28, 28, 384) and aud.shape == (b, 1, 5, 384)
  np.testing.assert_array_equal(np.asarray(mask), ref['mask'].numpy())
  assert not np.asarray(mask).all()  # The shorter clips exercise the mask.
  cal = model.apply(v, method=model.calibration)
  _report('DenseAV (1 ViT block + LoRA, 1 HuBERT-Large layer, 224^2, 1 s)',
          image_feats=_maxdiff(img, ref['image_feats'].permute(0, 2, 3, 1).numpy()),
          image_cls=_maxdiff(img_cls, ref['image_cls'].numpy()),
          audio_feats=_maxdiff(aud, ref['audio_feats'].permute(0, 2, 3, 1).numpy()),
          audio_cls=_maxdiff(aud_cls, ref['audio_cls'].numpy()),
          scores=_maxdiff(scores, ref['scores'].numpy()), calibration=abs(float(cal) - 2.0))
  # LoRA matters: the same model without the adapters gives other image features.
  no_lora = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if p[-1].key == 'lora_b' else x, v)
  assert _maxdiff(img_fn(no_lora, images)[0], img) > 1e-2


def test_non_lora_layout_and_old_weight_norm(released):
  """Adapters merged into qkv.weight (no base_model/base_layer keys) + weight_g/weight_v:
  equals the LoRA conversion merged by lora.merge."""
  _, sd, config = released
  plain = {}
  for k, v in sd.items():
    if '.lora_' in k:
      continue
    k2 = k.replace('image_model.base_model.model.model.', 'image_model.model.')
    k2 = k2.replace('qkv.base_layer.', 'qkv.')
    k2 = k2.replace('parametrizations.weight.original0', 'weight_g')
    k2 = k2.replace('parametrizations.weight.original1', 'weight_v')
    if k2.endswith('qkv.weight') and k2.startswith('image_model.'):
      a = sd[k.replace('base_layer.weight', 'lora_A.default.weight')]
      bm = sd[k.replace('base_layer.weight', 'lora_B.default.weight')]
      v = v + bm @ a * 4.0
    plain[k2] = v
  assert 'image_model.model.blocks.0.attn.qkv.weight' in plain
  assert AUD_P + 'encoder.pos_conv_embed.conv.weight_v' in plain
  cfg_plain, _ = hparams_conv.infer_config(plain, load_config('denseav.py', None))
  assert cfg_plain.model.image.lora.rank == 0
  got = denseav_conv.model_params(plain, cfg_plain)
  merged, merged_cfg = lora_lib.merge(denseav_conv.model_params(sd, config), config)
  assert merged_cfg.model.image.lora.rank == 0
  flat_got = io.flatten(got)
  flat_want = io.flatten(merged)
  assert sorted(flat_got) == sorted(flat_want)
  for k in flat_want:
    np.testing.assert_allclose(flat_got[k], flat_want[k], atol=1e-6, err_msg=k)


def test_errors_list_unknown_missing_misshaped(released):
  _, sd, config = released
  bad = dict(sd)
  bad[IMG_P + 'blocks.0.attn.extra.weight'] = torch.zeros(3, 3)
  del bad['audio_aligner.mod_list.3.layer.bias']
  bad['image_aligner.cls_layer.weight'] = torch.zeros(384, 383)
  with pytest.raises(errors.ConversionError) as e:
    denseav_conv.model_params(bad, config)
  msg = str(e.value)
  print(msg)
  assert '1 unknown: ' + IMG_P + 'blocks.0.attn.extra.weight' in msg
  assert 'missing: audio_aligner.mod_list.3.layer.bias' in msg
  assert ('mis-shaped: image_aligner.cls_layer.weight (-> image_aligner/cls_layer/kernel): '
          '(383, 384) after conversion, expected (384, 384)') in msg
  # A config that disagrees with the weights: LoRA keys unknown to a rank-0 model.
  cfg = config.copy_and_resolve_references()
  cfg.model.image.lora.rank = 0
  with pytest.raises(errors.ConversionError, match='lora_A.default.weight'):
    denseav_conv.model_params(sd, cfg)


def test_unreadable_files_are_clear_errors(tmp_path):
  junk = b'this is not a checkpoint\n' * 4
  for name in ('model.ckpt', 'model.pth', 'model.safetensors'):
    (tmp_path / name).write_bytes(junk)
    for allow_pickle in (False, True):
      with pytest.raises(errors.ConversionError, match=f'{name} could not be read as a'):
        torch_io.read(str(tmp_path / name), allow_pickle)
  folder = tmp_path / 'hf'
  os.makedirs(folder)
  (folder / 'model.safetensors.index.json').write_text('{"weight_map": [}')
  with pytest.raises(errors.ConversionError, match='index.json is not valid JSON'):
    torch_io.read(str(folder))
  (folder / 'model.safetensors.index.json').write_text('{"metadata": {}}')
  with pytest.raises(errors.ConversionError, match='has no "weight_map"'):
    torch_io.read(str(folder))


def test_hparams_mapping():
  config = load_config('denseav.py', None)
  hp = dict(code_dim=384, image_model_type='dino16', image_model_token_type='key',
            image_aligner_type='image_linear', audio_aligner_type='audio_sa_3_3_pool_2',
            sim_agg_type='mima', sim_agg_heads=2, sim_use_cls=True, nonneg_sim=True,
            head_agg='sum', image_lora=True, image_lora_rank=4, audio_lora=True,
            audio_lora_rank=2, loss_type='bce', cal_init=2.0, learn_audio_cls=True,
            tv_weight=0.02, mixup_weight=0.2, neg_audio=False, image_pool_width=1, lr=1e-4,
            lr_schedule='sgdr', finetune_audio_model=True, use_cached_embs=True)
  notes = hparams_conv.apply(config, hp)
  m = config.model
  assert (m.image.patch_size, m.image.token_type, m.image.pos_grid) == (16, 'key', 14)
  assert (m.num_heads, m.image.lora.rank, m.audio.lora.rank) == (2, 4, 2)
  assert m.audio.lora.targets == ('q_proj', 'k_proj', 'v_proj')
  assert (config.sim.agg, config.sim.head_agg, config.sim.use_cls, config.sim.nonneg) == (
      'mima', 'sum', True, True)
  assert (config.loss.type, config.sim.cal_init, config.loss.weights.tv) == ('bce', 2.0, 0.02)
  # The release's <term>_weight names map onto loss.weights; neg_audio=False turns it off.
  assert (config.loss.weights.mixup, config.loss.weights.neg_audio) == (0.2, 0.0)
  assert (m.train_image_pool, config.lr) == (1, 1e-4)
  assert any('sgdr' in n for n in notes)
  # peft freezes a LoRA-wrapped tower's own weights, whatever finetune_audio_model says.
  assert not m.audio.finetune and any('audio_lora=True' in n for n in notes)
  assert any('use_cached_embs' in n for n in notes)  # A note, not an error.
  with pytest.raises(errors.ConversionError) as e:
    hparams_conv.apply(config, dict(image_model_type='clip', audio_aligner_type='nope',
                                       learn_audio_cls=False))
  for word in ('image_model_type=', 'clip', 'audio_aligner_type=', 'learn_audio_cls=False'):
    assert word in str(e.value)


# -------------------------------------------------------------------------------- CLI

@pytest.fixture(scope='module')
def release_ckpt(released, tmp_path_factory):
  """The released model as the release saves it (a Lightning .ckpt), converted once with the
  CLI; -> (the .ckpt's converted output directory, the CLI's result). Read it; a test that
  changes it works on a copy."""
  _, sd, _ = released
  tmp_path = tmp_path_factory.mktemp('release_ckpt')
  hp = dict(code_dim=384, image_model_type='dino8', image_model_token_type='token',
            image_aligner_type='image_linear', audio_model_type='hubert',
            audio_aligner_type='audio_sa_3_3_pool_2', image_lora=True, image_lora_rank=8,
            audio_lora=False, audio_lora_rank=8, learn_audio_cls=True, sim_agg_type='misa',
            sim_agg_heads=1, sim_use_cls=False, nonneg_sim=False, head_agg='max_elementwise',
            loss_type='nce', cal_init=1.0, tv_weight=0.03, image_pool_width=2,
            lr_schedule=None)
  ckpt = tmp_path / 'denseav_language.ckpt'
  torch.save({'state_dict': sd, 'hyper_parameters': hp, 'epoch': 0, 'global_step': 10,
              'pytorch-lightning_version': '1.9.0'}, ckpt)
  out = tmp_path / 'converted'
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.convert', '--source', 'denseav',
                      '--input', str(ckpt), '--output', str(out)], cwd=ROOT,
                     env=subprocess_env(cache=False), capture_output=True, text=True,
                     timeout=300)
  return out, r


@pytest.mark.subprocess
def test_cli_denseav_ckpt_round_trip(released, release_ckpt):
  _, sd, _ = released
  out, r = release_ckpt
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'image_model/blocks_0/attn/qkv/lora_b (8, 1152)' in r.stdout
  config = model_io.load_config(str(out))
  assert config.model.image.depth == 1 and config.model.audio.depth == 1
  assert config.model.image.lora.rank == 8 and config.loss.weights.tv == 0.03
  with open(out / 'config.json') as f:
    assert json.load(f)['model']['audio_aligner'] == 'audio_sa_3_3_pool_2'
  want = denseav_conv.model_params(sd, config)
  loaded = model_io.load_params(str(out), denseav_conv.target_params(config))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, want)
  # ... and predicting from the converted directory gives the PyTorch model's features
  # and score (convert -> save -> load -> predict).
  from denseav_jax.inference import predict  # pylint: disable=g-import-not-at-top
  model_t = released[0]
  fp32 = config.copy_and_resolve_references()
  fp32.model.dtype = 'float32'  # Parity at fp32 (configs/denseav.py computes in bf16).
  net, params, cfg = predict.load_model(str(out), fp32)
  rng = np.random.default_rng(11)
  image = rng.integers(0, 256, size=(224, 224, 3)).astype(np.uint8)
  clip = cfg.input.audio_samples
  wave = np.zeros(clip, np.float32)
  wave[:12000] = rng.normal(size=12000).astype(np.float32)
  got = predict.predict(net, params, cfg, image, wave, 12000)
  ref = model_t(image[None], wave[None], np.array([12000], np.int32))
  assert got['image_feats'].shape == (384, 28, 28) and got['audio_feats'].shape == (384, 1, 56)
  _report('convert -> load -> predict (10.26 s clip)',
          image_feats=_maxdiff(got['image_feats'], ref['image_feats'][0].numpy()),
          audio_feats=_maxdiff(got['audio_feats'], ref['audio_feats'][0].numpy()),
          score=abs(float(got['score']) - float(ref['scores'][0, 0])))
  np.testing.assert_array_equal(got['audio_mask'], ref['mask'][0].numpy())


@pytest.mark.slow
@pytest.mark.subprocess
def test_evaluate_converted_release_checkpoint_on_fixtures(release_ckpt, tmp_path):
  """A release checkpoint, converted, evaluated from the CLI with no training workdir on
  fixture copies of ADE20K Speech-/Sound-Prompted and Places Audio val (the real layouts);
  a missing evaluation set is a one-line error naming the file expected."""
  from denseav_jax.testing import fixtures  # pylint: disable=g-import-not-at-top
  out, r = release_ckpt
  assert r.returncode == 0, r.stderr[-3000:]
  out = shutil.copytree(out, tmp_path / 'converted')  # Its config.json gains an evaluator.
  raw = tmp_path / 'raw'
  fixtures.places_audio(str(raw), num_train=1, num_val=3, faults=False, seconds=(1.0, 3.0))
  fixtures.ade20k_prompted(str(raw), 'speech', num=2, faults=False)
  fixtures.ade20k_prompted(str(raw), 'sound', num=2, faults=False)
  fixtures.audioset(str(raw), num_train=1, num_val=2, faults=False, seconds=(1.0, 2.0))
  with open(out / 'config.json') as f:  # AudioSet eval pairs too (the sound model's set).
    saved = json.load(f)
  saved['evals']['retrieval_audioset'] = dict(type='retrieval', dataset='audioset:val',
                                              num_examples=1000)
  with open(out / 'config.json', 'w') as f:
    json.dump(saved, f)
  # Two devices and batches of two: the release's towers at full input size are most of
  # the time, and a batch of 8 would be mostly padding here (sharded evaluation on 1-8
  # devices: test_suite.py). No compilation cache: the release's attention ViT (conftest).
  env = subprocess_env(devices=2, cache=False)
  cmd = [sys.executable, '-m', 'denseav_jax.evaluate', '--checkpoint', str(out),
         '--config', f'{ROOT}/configs/converted.py:{out}', '--config.eval_batch_size=2',
         '--config.eval_num_figures=1']
  r = subprocess.run(cmd + ['--workdir', str(tmp_path / 'ev'), f'--config.data.raw_dir={raw}'],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / 'ev' / 'eval' / '0' / 'metrics.json') as f:
    m = json.load(f)
  for k in ('speech_prompted/advanced_ap', 'speech_prompted/basic_iou',
            'sound_prompted/basic_ap', 'retrieval_places/a2i_r1', 'retrieval_places/i2a_r5',
            'retrieval_audioset/a2i_r1'):
    assert 0.0 <= m[k] <= 1.0, k
  assert m['retrieval_places/num_examples'] == 3 and m['retrieval_places/a2i_r5'] == 1.0
  assert m['speech_prompted/num_examples'] == 2 and m['retrieval_audioset/num_examples'] == 2
  for fig in ('overlay', 'activation', 'pca'):
    assert os.path.exists(tmp_path / 'ev' / 'eval' / '0' / f'speech_prompted_{fig}.png')
  empty = tmp_path / 'empty'
  empty.mkdir()
  r = subprocess.run(cmd + ['--workdir', str(tmp_path / 'ev2'), f'--config.data.raw_dir={empty}',
                            '--evals', 'speech_prompted'],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'prompted_segmentation.csv' in lines[0], r.stderr[-2000:]


def _small_denseav_config():
  config = load_config('denseav.py', None)
  config.model.image.depth = 1
  config.model.audio.depth = 1
  return config


def test_convert_hubert_folder_and_dino_file(tmp_path):
  """--source hubert from a Hugging Face folder (config.json + model.safetensors of a
  HubertForCTC): the tower comes from the input, the rest is train.init_params with
  config.seed. Then a DINO training checkpoint file through load_torch_file."""
  from transformers import HubertForCTC  # pylint: disable=g-import-not-at-top
  hf = HubertForCTC(tm.hubert_config('base', num_layers=1, vocab_size=32)).eval()
  hf.save_pretrained(tmp_path / 'hf')
  assert os.path.exists(tmp_path / 'hf' / 'model.safetensors')
  config = _small_denseav_config()
  config.model.audio.lora.rank = 2  # Fresh adapters on top of the pretrained weights.
  params, cfg = convert_lib.convert('hubert', str(tmp_path / 'hf'), config)
  a = cfg.model.audio
  assert (a.width, a.depth, a.feat_extract_norm, a.norm_first, a.conv_bias, a.lora.rank) == (
      768, 1, 'group', False, False, 2)
  q = params['audio_model']['layers_0']['attention']['q_proj']
  assert q['lora_a'].shape == (768, 2) and not np.any(q['lora_b'])
  want = hubert_conv.tower_params(hf.hubert.state_dict())
  got = lora_lib.merge(params, cfg)[0]['audio_model']  # B = 0: merging drops the adapters.
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert cfg.model.image.depth == 1 and cfg.model.image.width == 384
  model_io.compare_trees(params, denseav_conv.target_params(cfg), 'converted')

  # A DINO training checkpoint file (the dino source reads it the same way).
  vit = tm.DinoViT(16, 384, depth=1, num_heads=6)
  torch.save({'teacher': {'module.backbone.' + k: v for k, v in vit.state_dict().items()},
              'epoch': 1}, tmp_path / 'dino.pth')
  sd = torch_io.load_torch_file(str(tmp_path / 'dino.pth'))
  assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
  tower = dino_conv.tower_params(sd)
  jax.tree.map(np.testing.assert_array_equal, tower, dino_conv.tower_params(vit.state_dict()))
  fields = dino_conv.tower_fields(tower)
  assert (fields['patch_size'], fields['pos_grid'], fields['depth']) == (16, 14, 1)


def test_load_torch_file_objects_need_allow_pickle(tmp_path, monkeypatch):
  """A checkpoint holding objects of a module that is not installed (as Lightning's
  AttributeDict would be here) loads only with allow_pickle, the object as a dict."""
  import types  # pylint: disable=g-import-not-at-top
  fake = types.ModuleType('fake_lightning_utils')

  class AttributeDict(dict):
    pass
  AttributeDict.__module__ = fake.__name__
  AttributeDict.__qualname__ = 'AttributeDict'
  fake.AttributeDict = AttributeDict
  monkeypatch.setitem(sys.modules, fake.__name__, fake)
  path = tmp_path / 'model.ckpt'
  torch.save({'state_dict': {'w': torch.ones(2)},
              'hyper_parameters': AttributeDict(sim_agg_heads=2)}, path)
  monkeypatch.delitem(sys.modules, fake.__name__)
  with pytest.raises(errors.ConversionError, match='allow_pickle=True'):
    torch_io.load_torch_file(str(path))
  sd = torch_io.load_torch_file(str(path), allow_pickle=True)
  assert list(sd) == ['w'] and sd['w'].dtype == np.float32
  obj, _ = torch_io.read(str(path), allow_pickle=True)
  assert dict(obj['hyper_parameters']) == {'sim_agg_heads': 2}
  # peft < 0.3 spelled the adapters without a name.
  lin = {'qkv.base_layer.weight': np.zeros((6, 2)), 'qkv.base_layer.bias': np.zeros(6),
         'qkv.lora_A.weight': np.ones((1, 2)), 'qkv.lora_B.weight': np.ones((6, 1))}
  r = mapping.Reader(lin)
  tree = {}
  mapping.linear(r, 'qkv', 'qkv', tree)
  assert tree['qkv']['lora_a'].shape == (2, 1) and tree['qkv']['lora_b'].shape == (1, 6)
  assert not r.unused() and not r.missing
  # peft < 0.7 kept the wrapped weight at qkv.weight (no base_layer) beside the adapters.
  old = {'qkv.weight': np.full((6, 2), 2.0), 'qkv.bias': np.zeros(6),
         'qkv.lora_A.default.weight': np.ones((1, 2)), 'qkv.lora_B.default.weight': np.ones((6, 1))}
  r = mapping.Reader(old)
  tree = {}
  mapping.linear(r, 'qkv', 'qkv', tree)
  assert tree['qkv']['kernel'].shape == (2, 6) and (tree['qkv']['kernel'] == 2).all()
  assert tree['qkv']['lora_a'].shape == (2, 1) and tree['qkv']['lora_b'].shape == (1, 6)
  assert not r.unused() and not r.missing


@pytest.mark.parametrize('kind', aligners_lib.ALIGNERS)
def test_every_aligner_converts_with_parity(kind):
  """Each release aligner: its state dict (release key names) converts onto ours, every key
  used, and the two compute the same map and CLS (8 code channels: the SA blocks pad)."""
  audio = kind.startswith('audio')
  cin, code = (10, 8) if audio else (8, 8)
  torch.manual_seed(5)
  ref = _perturb(td.torch_aligner(kind, cin, code), seed=6).eval()
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, cin, 3, 18) if audio else (2, cin, 4, 5)).astype(np.float32)
  cls = rng.normal(size=(2, cin)).astype(np.float32)
  ours = aligners_lib.build(kind, code, heads=6, name='a')
  x_ours = x.transpose(0, 2, 3, 1)  # [B, C, F, T] / [B, C, H, W] -> channels last
  target = nn_linen.meta.unbox(jax.eval_shape(lambda: ours.init(jax.random.key(0), x_ours,
                                                                 cls))).get('params', {})
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  r = mapping.Reader(sd)
  out = {}
  if sd:
    mapping.target_driven(r, '', 'a', target, out)
    mapping.raise_if_bad(kind, r.unused(), r.missing, r.misshaped)
  params = out.get('a', {})
  got_x, got_cls = ours.apply({'params': params}, x_ours, cls)
  with torch.no_grad():
    want_x, want_cls = ref(torch.from_numpy(x), torch.from_numpy(cls))
  _report(f'aligner {kind}', map=_maxdiff(got_x, want_x.numpy().transpose(0, 2, 3, 1)),
          cls=_maxdiff(got_cls, want_cls.numpy()))
