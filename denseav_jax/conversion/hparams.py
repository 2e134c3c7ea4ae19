"""The run config that describes a checkpoint: a release checkpoint's hyper_parameters, then
the tower shapes and LoRA ranks read from the weights.

`apply` sets the model, similarity, loss and training fields of a config from the release's
Lightning `hyper_parameters` (unsupported values are an errors.ConversionError naming them);
`infer_config` adds what only the weights say; `set_tower` writes shape fields read by
dino.tower_fields / hubert.tower_fields into a tower's config.
"""

import copy
from typing import Any, Mapping

from denseav_jax import errors
from denseav_jax.losses import contrastive
from denseav_jax.conversion import denseav
from denseav_jax.conversion import dino
from denseav_jax.conversion import hubert
from denseav_jax.conversion import mapping
from denseav_jax.models import aligners
from denseav_jax.models import image as image_lib
from denseav_jax.similarity import dense

IMAGE_MODEL_TYPES = {'dino8': 'vit_small_8', 'dino16': 'vit_small_16', 'vit': 'vit_small_16'}
RELEASE_IMAGE_SIZE = 224  # The release's DINO positional table covers 224 x 224 images.
RELEASE_LORA = dict(alpha=32.0, dropout=0.1)  # peft settings of the release.
RELEASE_LORA_RANK = 8  # When the checkpoint names no *_lora_rank.
# The release's hyper-parameter -> config.loss field, for the plain float ones.
_LOSS_FLOATS = (('loss_margin', 'margin'), ('loss_leak', 'leak'))
# The release's regulariser weight -> its term (config.loss.weights key).
_LOSS_WEIGHTS = (('tv_weight', 'tv'), ('neg_audio_weight', 'neg_audio'),
                 ('mixup_weight', 'mixup'), ('silence_l1', 'silence_l1'),
                 ('silence_l2', 'silence_l2'), ('nonneg_pressure', 'nonneg_pressure'),
                 ('cal_balance_weight', 'cal_balance'),
                 ('specialization_weight', 'specialization'),
                 ('disentangle_weight', 'disentangle'))


def set_tower(cfg, fields: Mapping[str, Any]) -> None:
  """Writes tower shape fields (and 'lora_rank' -> lora.rank) into config.model.<tower>."""
  fields = dict(fields)
  rank = fields.pop('lora_rank', None)
  for k, v in fields.items():
    cfg[k] = list(v) if isinstance(v, tuple) and isinstance(cfg.get(k), list) else v
  if rank is not None:
    cfg.lora.rank = rank


def _apply_lora(m, hp: Mapping[str, Any], notes: list[str]) -> None:
  for key, tower, targets in (('image_lora', 'image', ('qkv',)),
                              ('audio_lora', 'audio', ('q_proj', 'k_proj', 'v_proj'))):
    if key in hp:
      rank = int(hp.get(f'{key}_rank', RELEASE_LORA_RANK)) if hp[key] else 0
      m[tower].lora.update(rank=rank, targets=targets, **RELEASE_LORA)
  for key, tower in (('finetune_image_model', 'image'), ('finetune_audio_model', 'audio')):
    if key in hp:
      m[tower].finetune = bool(hp[key])
    if m[tower].lora.rank > 0 and hp.get(f'{tower}_lora'):
      # peft's get_peft_model freezes every non-adapter weight of the tower it wraps.
      if m[tower].finetune:
        notes.append(f'{tower}_lora=True: the {tower} tower\'s own weights are frozen '
                     '(peft trains only the adapters), whatever ' + key + ' says')
      m[tower].finetune = False


def _apply_training(config, hp: Mapping[str, Any], notes: list[str]) -> None:
  for key, dst in _LOSS_FLOATS:
    if hp.get(key) is not None:
      config.loss[dst] = float(hp[key])
  for key, term in _LOSS_WEIGHTS:
    if hp.get(key) is not None:
      config.loss.weights[term] = float(hp[key])
  if hp.get('neg_audio') is False:
    config.loss.weights.neg_audio = 0.0
  if hp.get('lr') is not None:
    config.lr = float(hp['lr'])
  if hp.get('lr_warmup') is not None:
    config.warmup_steps = int(hp['lr_warmup'])
  if hp.get('gradient_clipping') is not None:
    config.grad_clip_per_tensor = float(hp['gradient_clipping'])
  if 'lr_schedule' in hp and hp['lr_schedule'] in (None, 'constant'):
    config.lr_schedule = 'constant'  # The release's default: warm-up, then constant.
  elif hp.get('lr_schedule') is not None:
    notes.append(f"lr_schedule={hp['lr_schedule']!r} is not reproduced (kept "
                 f'config.lr_schedule={config.lr_schedule!r})')
  for key in ('spatial_dropout', 'channel_dropout', 'memory_buffer_size'):
    if hp.get(key):
      notes.append(f'{key}={hp[key]!r} (training only) is not reproduced')


def apply(config, hp: Mapping[str, Any]) -> list[str]:
  """Sets the config from a release checkpoint's hyper_parameters (in place).

  Model: code_dim, sim_agg_heads -> model.num_heads, image_model_type (dino8 / dino16 / vit
  -> DINO ViT-S/8 or S/16), image_model_token_type, image/audio_aligner_type,
  image_pool_width -> model.train_image_pool, image_lora(_rank) / audio_lora(_rank) (alpha
  32, dropout 0.1, targets qkv / q,k,v_proj as peft in the release), finetune_*_model.
  Similarity: sim_agg_type, head_agg, sim_use_cls, nonneg_sim, mask_silence, cal_init.
  Loss: loss_type, loss_margin, loss_leak and the regulariser weights. Training: lr,
  lr_warmup, gradient_clipping. Absent keys keep the config's value. Raises
  errors.ConversionError for values our model does not implement. Returns notes on ignored
  training-only settings.
  """
  problems, notes = [], []
  m = config.model

  def check(key, ok, allowed):
    if key in hp and not ok(hp[key]):
      problems.append(f'{key}={hp[key]!r} (supported: {allowed})')
      return False
    return key in hp

  if check('image_model_type', lambda v: v in IMAGE_MODEL_TYPES, sorted(IMAGE_MODEL_TYPES)):
    m.image.update(image_lib.VIT_VARIANTS[IMAGE_MODEL_TYPES[hp['image_model_type']]])
    m.image.pos_grid = RELEASE_IMAGE_SIZE // m.image.patch_size
  if check('image_model_token_type', lambda v: v in ('token', 'key'), ['token', 'key']):
    m.image.token_type = hp['image_model_token_type']
  check('audio_model_type', lambda v: v == 'hubert', ['hubert'])
  if check('image_aligner_type', lambda v: v in aligners.IMAGE_ALIGNERS,
           list(aligners.IMAGE_ALIGNERS)):
    m.image_aligner = hp['image_aligner_type']
  if check('audio_aligner_type', lambda v: v in aligners.AUDIO_ALIGNERS,
           list(aligners.AUDIO_ALIGNERS)):
    m.audio_aligner = hp['audio_aligner_type']
  if check('code_dim', lambda v: int(v) > 0, 'a positive integer'):
    m.code_dim = int(hp['code_dim'])
  if check('sim_agg_heads', lambda v: int(v) > 0, 'a positive integer'):
    m.num_heads = int(hp['sim_agg_heads'])
  if check('image_pool_width', lambda v: int(v) >= 1, 'an integer >= 1'):
    m.train_image_pool = int(hp['image_pool_width'])
  check('audio_pool_width', lambda v: v in (None, 0, 1), [1])
  check('learn_audio_cls', lambda v: bool(v), [True])
  check('norm_vectors', lambda v: not v, [False])
  if hp.get('use_cached_embs'):
    notes.append('use_cached_embs=True: the release trained on precomputed audio features; '
                 'the converted model runs the audio tower (its weights must be in the file), '
                 'as the release does at inference')
  _apply_lora(m, hp, notes)
  if check('sim_agg_type', lambda v: v in dense.AGGREGATORS, list(dense.AGGREGATORS)):
    config.sim.agg = hp['sim_agg_type']
  if check('head_agg', lambda v: v in dense.HEAD_AGGREGATIONS,
           list(dense.HEAD_AGGREGATIONS)):
    config.sim.head_agg = hp['head_agg']
  for key, dst in (('sim_use_cls', 'use_cls'), ('nonneg_sim', 'nonneg'),
                   ('mask_silence', 'mask_silence')):
    if key in hp:
      config.sim[dst] = bool(hp[key])
  if 'cal_init' in hp:
    config.sim.cal_init = float(hp['cal_init'])
  if check('loss_type', lambda v: v in contrastive.LOSS_TYPES, list(contrastive.LOSS_TYPES)):
    config.loss.type = hp['loss_type']
  _apply_training(config, hp, notes)
  if problems:
    raise errors.ConversionError('unsupported hyper_parameters: ' + '; '.join(problems))
  return notes


def infer_config(sd: Mapping[str, Any], config, hparams: Mapping[str, Any] | None = None):
  """A copy of `config` describing the model in release-layout state dict `sd`:
  hyper_parameters first (`apply`), then the tower shapes and LoRA ranks read from the
  weights. Returns (config, notes)."""
  config = copy.deepcopy(config)
  notes = apply(config, hparams) if hparams else []
  sd = denseav.strip_wrappers(sd)
  r = mapping.Reader(sd)
  image_p = denseav.tower_prefix(r, denseav.IMAGE_PREFIXES)
  audio_p = denseav.tower_prefix(r, denseav.AUDIO_PREFIXES)
  try:
    if any(k.startswith(image_p) for k in sd):
      set_tower(config.model.image, dino.tower_fields(dino.map_keys(mapping.Reader(sd), image_p)))
    if any(k.startswith(audio_p) for k in sd):
      audio, _ = hubert.map_keys(mapping.Reader(sd), audio_p, fill_masked_spec=True)
      set_tower(config.model.audio, hubert.tower_fields(audio))
  except (KeyError, errors.ConversionError) as e:  # model_params lists what is missing.
    notes.append(f'could not read the tower shapes from the weights ({e})')
  if 'sim_cal.b' in sd and config.loss.type == 'nce' and not hparams:
    notes.append('sim_cal.b present: the checkpoint was trained with a loss other than nce; '
                 'set config.loss.type')
  return config, notes
