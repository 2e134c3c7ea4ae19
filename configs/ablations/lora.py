"""LoRA ablation: low-rank adapters on frozen backbones, on or off.

Synthetic study: both towers frozen, with and without rank-8 LoRA (alpha 32) on the image
MLPs (`fc1`, `fc2`; the tiny image tower mixes tokens with convolutions, so it has no `qkv`)
and the audio attention projections; `finetune` (both towers trained, no LoRA) is the
reference. Paper models: the released recipe (frozen DINO with LoRA on `qkv`, HuBERT
fine-tuned) against the same without the image LoRA; docs/method.md#lora.
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

FROZEN = {'model.image.finetune': False, 'model.audio.finetune': False}
SYNTHETIC = spec.axis('lora', {
    'finetune': {'model.image.finetune': True, 'model.audio.finetune': True},
    'frozen': dict(FROZEN),  # The synthetic base has no LoRA (rank 0).
    'frozen+lora8': {**FROZEN, 'model.image.lora.rank': 8, 'model.image.lora.alpha': 32.0,
                     'model.image.lora.targets': ('fc1', 'fc2'),
                     'model.audio.lora.rank': 8, 'model.audio.lora.alpha': 32.0,
                     'model.audio.lora.targets': ('q_proj', 'k_proj', 'v_proj')},
})
PAPER = spec.axis('lora', {'lora8': {'model.image.lora.rank': 8},
                           'off': {'model.image.lora.rank': 0}})


def get_config(arg=None):
  base, overrides = common.base(arg)
  return spec.sweep_config(base=base, points=PAPER if arg else SYNTHETIC,
                           seeds=common.seeds(arg), overrides=overrides,
                           metric='speech_prompted/basic_ap',
                           description='LoRA adapters (model.*.lora)')
