"""Aggregator ablation: how the similarity volume becomes one score per pair.

DenseAV's `misa` (max over image space, mean over audio time) against the other volume
reductions (`mima`, `sisa`, `paired`) and the global baselines that compare one pooled vector
per example (`cavmae`, `imagebind`, `simpool`); docs/method.md#aggregators.

  python -m denseav_jax.sweep --config configs/ablations/aggregator.py --workdir runs/agg
  python -m denseav_jax.sweep --config configs/ablations/aggregator.py:language ...  (paper)
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

AGGREGATORS = ('misa', 'mima', 'sisa', 'paired', 'cavmae', 'imagebind', 'simpool')
AXIS = spec.axis('agg', {a: {'sim.agg': a} for a in AGGREGATORS})


def get_config(arg=None):
  base, overrides = common.base(arg)
  return spec.sweep_config(base=base, points=AXIS, seeds=common.seeds(arg), overrides=overrides,
                           metric='speech_prompted/basic_ap',
                           description='similarity aggregator (sim.agg)')
