"""Disentanglement ablation: two heads on the mixed stream, with and without the loss that
gives head 0 to speech and head 1 to sound (docs/method.md#regularisers; the release trains
its two-head model with weight 0 and lets the heads split the work by themselves).

Base: configs/synthetic.py:twohead (paper: configs/denseav_2head.py). Points: the loss
weight 0, 0.05, 1 and 10 (the synthetic `:disentangle` default).
"""

from denseav_jax import errors
from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

WEIGHTS = (0.0, 0.05, 1.0, 10.0)
AXIS = spec.axis('disentangle', {f'w{w:g}': {'loss.weights.disentangle': w} for w in WEIGHTS})


def get_config(arg=None):
  if arg not in (None, '', '2head'):
    raise errors.ConfigError(f'configs/ablations/disentangle.py:{arg}: needs a two-head base; use no '
                     'ARG (the synthetic study) or 2head')
  base, overrides = common.base(arg, synthetic='configs/synthetic.py:twohead')
  return spec.sweep_config(base=base, points=AXIS, seeds=common.seeds(arg), overrides=overrides,
                           metric='disentangle/ap_dis',
                           description='disentanglement loss weight (loss.weights.disentangle)')
