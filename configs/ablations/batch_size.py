"""Contrastive batch ablation: the number of pairs each audio clip is scored against.

The global batch is one contrastive batch however it is sharded (the scalable similarity
operator, docs/method.md#scalable-similarity-operator). Same number of steps at every size,
so larger batches also see more examples. Synthetic study: 8 to 64; paper models: the
release's 40 up to 320 (pod scale).
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

SYNTHETIC = (8, 16, 32, 64)
PAPER = (40, 80, 160, 320)


def get_config(arg=None):
  base, overrides = common.base(arg)
  sizes = PAPER if arg else SYNTHETIC
  points = spec.axis('batch', {f'b{b}': {'batch_size': b} for b in sizes})
  return spec.sweep_config(base=base, points=points, seeds=common.seeds(arg),
                           overrides=overrides, metric='speech_prompted/basic_ap',
                           description='contrastive batch size (batch_size)')
