"""Backbone fine-tuning ablation: which towers train and which stay frozen.

`both` trains both towers (the synthetic model, trained from scratch, needs it), `image_frozen`
and `audio_frozen` freeze one (the released models freeze DINO and fine-tune HuBERT),
`frozen` trains only the aligners (and any LoRA adapters the base config has);
docs/training.md#recipe.
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

AXIS = spec.axis('finetune', {
    'both': {'model.image.finetune': True, 'model.audio.finetune': True},
    'image_frozen': {'model.image.finetune': False, 'model.audio.finetune': True},
    'audio_frozen': {'model.image.finetune': True, 'model.audio.finetune': False},
    'frozen': {'model.image.finetune': False, 'model.audio.finetune': False},
})


def get_config(arg=None):
  base, overrides = common.base(arg)
  return spec.sweep_config(base=base, points=AXIS, seeds=common.seeds(arg), overrides=overrides,
                           metric='speech_prompted/basic_ap',
                           description='backbone fine-tuning (model.*.finetune)')
