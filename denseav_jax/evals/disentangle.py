"""Disentanglement of speech and sound by a two-head model (docs/evaluation.md#disentanglement).

  config.evals.disentangle = dict(type='disentangle', speech='places_audio:val',
                                  sound='audioset:val', num_examples=1000)

Each head's matched-pair score (space and time aggregated, heads kept apart) on the speech
pairs and the sound pairs (the same pair sets as retrieval, embedded once per evaluation);
metrics.disentanglement_metrics turns them into ap_dis and act_dis, plus the AP and
activation matrices' entries ap_h{head}_{speech|sound} and act_h{head}_{speech|sound}.
"""

from __future__ import annotations

from denseav_jax import errors
from denseav_jax.evals import base
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.evals import pairs


class Disentangle(base.Evaluator):
  type_name = 'disentangle'
  DEFAULTS = dict(speech='', sound='', num_examples=1000)
  REQUIRED = ('speech', 'sound')

  def __init__(self, *args):
    super().__init__(*args)
    if int(self.config.model.num_heads) != 2:
      raise errors.ConfigError(
          f'config.evals.{self.name} (disentangle) needs a two-head model, but '
          f'model.num_heads={self.config.model.num_heads}: remove the evaluator or use a '
          'two-head config')

  def run(self, params, cache) -> base.Output:
    scores = []
    for dataset in (self.cfg.speech, self.cfg.sound):
      _, res = pairs.PairSet.get(self, params, cache, dataset, self.cfg.num_examples)
      scores.append(res.outputs['head_scores'][res.valid])
    m = metrics_lib.disentanglement_metrics(*scores)
    out = {'ap_dis': m['ap_dis'], 'act_dis': m['act_dis']}
    for h in range(2):
      for j, kind in enumerate(('speech', 'sound')):
        out[f'ap_h{h}_{kind}'] = float(m['ap'][h, j])
        out[f'act_h{h}_{kind}'] = float(m['act'][h, j])
    return base.Output(out)
