"""The paper's three models as configs (configs/denseav_{language,sound,2head}.py): the
release's values, and a two-step run of each `runlocal` on the synthetic world."""

import json
import math
import os

import pytest

from conftest import load_config
from denseav_jax.trainer import loop
from denseav_jax.trainer import progress

# config file -> (configs/denseav.py variant, data set, heads, synthetic modality,
# evaluation interval in steps).
PAPER = {
    'denseav_language.py': ('language', 'places_audio', 1, 'speech', 20_000),
    'denseav_sound.py': ('sound', 'audioset', 1, 'sound', 10_000),
    'denseav_2head.py': ('twohead', 'mixed', 2, 'mixed', 20_000),
}
# What every model shares: the release's av_align.yaml as its train.py uses it.
RELEASE = {
    'input.image_size': 224,  # load_size
    'input.audio_samples': 164_200,
    'model.code_dim': 384,  # code_dim
    'model.image.patch_size': 8,  # image_model_type dino8: DINO ViT-S/8
    'model.image.width': 384,
    'model.image.depth': 12,
    'model.image.num_heads': 6,
    'model.image.mixer': 'attention',
    'model.image.token_type': 'token',  # image_model_token_type
    'model.image.finetune': False,  # finetune_image_model
    'model.image.lora.rank': 8,  # image_lora, image_lora_rank
    'model.image.lora.alpha': 32.0,
    'model.image.lora.dropout': 0.1,
    'model.image.lora.targets': ('qkv',),
    'model.audio.width': 1024,  # audio_model_type hubert: HuBERT-Large
    'model.audio.depth': 24,
    'model.audio.num_heads': 16,
    'model.audio.mlp_dim': 4096,
    'model.audio.frontend': 'conv',
    'model.audio.finetune': True,  # finetune_audio_model
    'model.audio.lora.rank': 0,  # audio_lora False
    'model.audio.dropout': 0.1,  # hubert-large-ls960-ft's training-time dropouts
    'model.audio.layerdrop': 0.1,
    'model.audio.mask_time_prob': 0.05,
    'model.image_aligner': 'image_linear',  # image_aligner_type
    'model.audio_aligner': 'audio_sa_3_3_pool_2',  # audio_aligner_type
    'model.aligner_heads': 6,
    'model.train_image_pool': 2,  # image_pool_width
    'model.image_grad': False,  # the image branch runs under torch.no_grad()
    'sim.agg': 'misa',  # sim_agg_type
    'sim.head_agg': 'max_elementwise',  # head_agg
    'sim.use_cls': False,  # sim_use_cls
    'sim.nonneg': False,  # nonneg_sim
    'sim.cal_init': 1.0,  # cal_init
    'sim.mask_silence': True,  # mask_silence
    'sim.vad': False,  # padding only
    'loss.type': 'nce',  # loss_type
    'loss.leak': 0.0,  # loss_leak
    'loss.margin': 0.0,  # loss_margin
    'loss.weights.tv': 0.01,  # tv_weight
    'loss.weights.neg_audio': 0.01,  # neg_audio_weight
    'loss.weights.mixup': 0.1,  # mixup_weight
    'loss.weights.silence_l1': 0.01,  # silence_l1
    'loss.weights.silence_l2': 0.0,  # silence_l2
    'loss.weights.nonneg_pressure': 0.01,  # nonneg_pressure
    'loss.weights.cal_balance': 0.1,  # cal_balance_weight
    'loss.weights.specialization': 0.05,  # specialization_weight (acts with K > 1)
    'loss.weights.disentangle': 0.0,  # disentangle_weight
    'data.image_aug': True,  # image_aug
    'data.quad_mixup': 0.1,  # quad_mixup
    'data.bg_mixup': 0.0,  # bg_mixup
    'data.patch_mixup': 0.0,  # patch_mixup
    'data.patch_size': 16,  # train.py: 8 * image_pool_width
    'data.neg_audio': True,  # neg_audio
    'data.extra_audio_masking': True,  # extra_audio_masking
    'pretrain_steps': 3000,  # pretrain_steps
    'pretrain_lr': 5e-5,  # pretrain_lr
    'lr': 5e-5,  # lr
    'warmup_steps': 1000,  # lr_warmup
    'lr_schedule': 'constant',  # lr_schedule ~
    'lr_cycle_length': 50_000,  # lr_cycle_length
    'adam_eps': 1e-7,  # torch.optim.Adam(eps=1e-7)
    'grad_clip_per_tensor': 10.0,  # gradient_clipping
    'batch_size': 40,  # batch_size 10 x num_gpus 4, gathered
    'num_train_steps': 3000 + 1_000_001,  # pretrain_steps + max_steps
    'log_every_steps': 50,  # log_every_n_steps
    'seed': 0,  # seed
    'model.dtype': 'bfloat16',  # the release: fp16 mixed precision
}


def _get(c, dotted):
  for part in dotted.split('.'):
    c = c[part]
  return tuple(c) if isinstance(c, list) else c


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_config_has_the_release_values(name):
  variant, data, heads, _, every = PAPER[name]
  c = load_config(name, None)
  for key, want in RELEASE.items():
    assert _get(c, key) == want, (name, key)
  assert c.data.name == data and c.model.num_heads == heads
  assert c.eval_every_steps == every
  # The release validates every model on the same sets (use_extra_val_sets).
  e = c.evals.speech_prompted
  assert (e.type, e.dataset, e.num_examples, e.advanced) == (
      'prompted_segmentation', 'ade20k_speech_prompted', 0, True)
  assert c.evals.sound_prompted.dataset == 'ade20k_sound_prompted'
  assert c.evals.sound_prompted.num_examples == 0
  assert (c.evals.retrieval_places.dataset, c.evals.retrieval_places.num_examples) == (
      'places_audio:val', 1000)
  assert (c.evals.retrieval_audioset.dataset, c.evals.retrieval_audioset.num_examples) == (
      'audioset:val', 1000)
  assert ('disentangle' in c.evals) == (heads == 2)
  if heads == 2:
    d = c.evals.disentangle
    assert (d.type, d.speech, d.sound, d.num_examples) == (
        'disentangle', 'places_audio:val', 'audioset:val', 1000)
  # Built from configs/denseav.py, not a copy of it.
  assert c.to_dict() == load_config('denseav.py', variant).to_dict()
  with pytest.raises(ValueError, match='unknown variant'):
    load_config(name, 'base8')


@pytest.mark.parametrize('name', sorted(PAPER))
def test_runlocal_is_the_recipe_on_the_synthetic_world(name):
  _, _, heads, modality, _ = PAPER[name]
  c = load_config(name, 'runlocal')
  assert (c.data.name, c.data.modality, c.model.num_heads) == ('synthetic', modality, heads)
  assert c.model.image.width <= 64 and c.model.audio.width <= 64  # Tiny towers.
  assert 0 < c.pretrain_steps < c.num_train_steps <= 300 and c.eval_at_end
  assert c.batch_size == 40
  for key in ('loss.weights.tv', 'loss.weights.neg_audio', 'loss.weights.mixup',
              'loss.weights.silence_l1', 'loss.weights.nonneg_pressure',
              'loss.weights.cal_balance', 'loss.weights.specialization', 'data.image_aug',
              'data.quad_mixup', 'data.neg_audio', 'data.extra_audio_masking', 'sim.agg',
              'sim.head_agg'):
    assert _get(c, key) == RELEASE[key], key
  datasets = {n: e.get('dataset') or (e.speech, e.sound) for n, e in c.evals.items()}
  want = {'speech_prompted': 'synthetic:speech_prompted',
          'sound_prompted': 'synthetic:sound_prompted',
          'retrieval_places': 'synthetic:retrieval:speech',
          'retrieval_audioset': 'synthetic:retrieval:sound'}
  if heads == 2:
    want['disentangle'] = ('synthetic:retrieval:speech', 'synthetic:retrieval:sound')
  assert datasets == want


@pytest.mark.slow
@pytest.mark.parametrize('name', ['denseav_2head.py'])
def test_runlocal_trains_both_phases_and_evaluates(name, tmp_path):
  """Two steps (one per phase) with every transform and regulariser on, then the final
  evaluation on small synthetic sets. The two-head config only: it has every loss term
  and every evaluator of the other two (plus specialization and disentanglement); the
  language and sound configs train from the command line on the real layouts
  (tests/data/test_training_on_real_layouts.py)."""
  heads = PAPER[name][2]
  c = load_config(name, 'runlocal')
  c.update(pretrain_steps=1, num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2,
           async_checkpointing=False, batch_size=16)
  c.data.quad_mixup = 1.0  # Every image a 2 x 2 grid: the mixup term is never 0.
  c.update(eval_batch_size=8, eval_num_figures=0)
  for entry in c.evals.values():
    entry.num_examples = 8
  workdir = str(tmp_path)
  loop.train_and_evaluate(c, workdir)
  logged = progress.read_metrics(workdir)
  assert sorted(logged) == [1, 2]
  assert [logged[s]['phase'] for s in (1, 2)] == [1, 2]
  for s in (1, 2):
    for term in ('loss', 'loss_nce', 'loss_tv', 'loss_neg_audio', 'loss_mixup',
                 'loss_silence_l1', 'loss_nonneg_pressure', 'loss_cal_balance'):
      assert math.isfinite(logged[s][term]), (s, term)
    assert ('loss_specialization' in logged[s]) == (heads == 2)
  assert logged[2]['loss_mixup'] > 0 and logged[2]['loss_neg_audio'] > 0
  with open(os.path.join(workdir, 'eval', '2', 'metrics.json')) as f:
    metrics = json.load(f)
  keys = ['speech_prompted/advanced_ap', 'speech_prompted/basic_ap', 'sound_prompted/basic_ap',
          'retrieval_places/a2i_r1', 'retrieval_audioset/i2a_r10']
  if heads == 2:
    keys += ['disentangle/ap_dis', 'disentangle/act_dis']
  for k in keys:
    assert 0.0 <= metrics[k] <= 1.0, k
  assert metrics['retrieval_places/num_examples'] == 8
  assert ('disentangle/ap_dis' in metrics) == (heads == 2)
