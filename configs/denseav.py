"""Full-size DenseAV (SPEC §1): DINO ViT-S/8 + HuBERT-Large + the release aligners.

Variants (`--config configs/denseav.py:VARIANT`):
  (none) | language   one similarity head (the released `denseav_language` layout).
  sound               one head (`denseav_sound`).
  twohead             two heads, speech/sound separation (`denseav_2head`).
  base8 / small16 / base16   the same with DINO ViT-B/8, ViT-S/16 or ViT-B/16.
  hubert_base         HuBERT-Base (post-norm, group-norm front end) instead of Large.

The release's training settings are on: LoRA (rank 8, alpha 32, dropout 0.1) on every
`qkv` of the frozen DINO, HuBERT fully fine-tuned with its published training-time
dropouts/LayerDrop/time masking, Adam 5e-5 with 1,000 warm-up steps and no decay, and the
image branch without gradient (`model.image_grad=False`, the release runs it under
torch.no_grad(); set True to train LoRA and the image aligner). Data: the synthetic world
at 224 x 224 with 10.26 s clips (164,200 samples -> 512 HuBERT frames -> 56 audio steps)
until the real data sets land. Start from converted weights with
`--config.init_from=DIR` (python -m denseav_jax.convert).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position

from denseav_jax.models import audio as audio_lib  # pylint: disable=g-import-not-at-top
from denseav_jax.models import image as image_lib  # pylint: disable=g-import-not-at-top

CLIP_SAMPLES = 164200  # SPEC §1: clips are padded / cut to this many 16 kHz samples.


def get_config(arg: str | None = None):
  c = default.get_config()
  variant = arg or ''
  c.data.world.image_size = 224
  c.data.world.audio_seconds = CLIP_SAMPLES / 16000
  c.model.code_dim = 384
  c.model.num_heads = 1
  c.model.image.update(image_lib.VIT_VARIANTS['vit_small_8'])
  c.model.image.update(mixer='attention', mlp_ratio=4, ln_eps=1e-4, dropout=0.0,
                       token_type='token', pos_grid=28, finetune=False)
  c.model.image.lora.update(rank=8, alpha=32.0, dropout=0.1, targets=('qkv',))
  c.model.audio.update(audio_lib.HUBERT_VARIANTS['hubert_large'])
  c.model.audio.update(ln_eps=1e-4, conv_ln_eps=1e-5, dropout=0.1, attention_dropout=0.1,
                       activation_dropout=0.1, feat_proj_dropout=0.1, layerdrop=0.1,
                       mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
                       finetune=True)
  c.model.audio.lora.update(rank=0)
  c.model.aligner_heads = 6
  c.model.image_aligner = 'image_linear'
  c.model.audio_aligner = 'audio_sa_3_3_pool_2'
  c.model.image_grad = False  # Release: image branch under torch.no_grad().
  c.model.train_image_pool = 2
  c.sim.vad = False  # The release masks padding only.
  c.loss.update(tv_weight=0.01, silence_l1=0.01, nonneg_pressure=0.01,
                cal_balance_weight=0.1)
  c.lr = 5e-5
  c.warmup_steps = 1000
  c.lr_schedule = 'constant'
  c.batch_size = 40  # Release: 10 per GPU x 4 GPUs, gathered into one contrastive batch.
  c.num_train_steps = 100_000
  c.eval_every_steps = 10_000
  c.eval.batch_size = 16
  variant_map = {'base8': 'vit_base_8', 'small16': 'vit_small_16', 'base16': 'vit_base_16'}
  if variant in ('', 'language', 'sound'):
    pass
  elif variant == 'twohead':
    c.model.num_heads = 2
    c.loss.specialization_weight = 0.05
  elif variant in variant_map:
    c.model.image.update(image_lib.VIT_VARIANTS[variant_map[variant]])
    c.model.image.pos_grid = 224 // c.model.image.patch_size
  elif variant == 'hubert_base':
    c.model.audio.update(audio_lib.HUBERT_VARIANTS['hubert_base'])
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/denseav.py; choose one of "
                     "'', 'language', 'sound', 'twohead', 'base8', 'small16', 'base16', "
                     "'hubert_base'")
  return c
