"""Regulariser ablation: each of DenseAV's loss regularisers switched off in turn.

The base has every regulariser at the release's weight (synthetic study: the quick-start
config, K = 1 head with negative-audio splicing and quad mixup; paper: the model's own
config). Points: `none` (nothing off), one point per regulariser with its weight at 0, and
`all` (every weight 0: the contrastive loss alone, the transforms still on);
docs/method.md#regularisers. Head specialisation only exists with K > 1 (`:2head`).
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

# Point label -> loss weight key (docs/method.md#regularisers).
TERMS = {
    'tv': 'loss.weights.tv',
    'negaudio': 'loss.weights.neg_audio',
    'mixup': 'loss.weights.mixup',
    'silence': 'loss.weights.silence_l1',
    'nonneg': 'loss.weights.nonneg_pressure',
    'calbal': 'loss.weights.cal_balance',
    'special': 'loss.weights.specialization',  # Only with K > 1 heads.
}


def axis(terms=tuple(TERMS)):
  values = {'none': {}}
  values.update({t: {TERMS[t]: 0.0} for t in terms})
  values['all'] = {TERMS[t]: 0.0 for t in terms}
  return spec.axis('off', values)


def get_config(arg=None):
  base, overrides = common.base(arg)
  one_head = arg != '2head'
  terms = tuple(t for t in TERMS if not (one_head and t == 'special'))
  return spec.sweep_config(base=base, points=axis(terms), seeds=common.seeds(arg),
                           overrides=overrides, metric='speech_prompted/basic_ap',
                           description='regularisers switched off in turn (loss.weights.*)')
