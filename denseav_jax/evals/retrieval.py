"""Cross-modal retrieval (docs/evaluation.md#retrieval).

  config.evals.retrieval_places = dict(type='retrieval', dataset='places_audio:val',
                                       num_examples=1000)

The pairs are the first num_examples of the release's seed-0 permutation of the split
(all of a smaller split). The N x N audio x image score matrix is computed sharded, through
the same similarity operator as training (each head scored, then the heads summed, as the
release evaluates), from features that never leave the devices; only the matrix comes
back. Metrics: a2i_r{1,5,10} (audio -> image), i2a_r{1,5,10}, chance_r{1,5,10}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.similarity import matrix
from denseav_jax.evals import base
from denseav_jax.evals import embed
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.evals import pairs


def score_fn(config, model, mesh, runner, block):
  """jit(params, features, valid [M]) -> the N x N (padded M x M) score matrix, sharded as
  `runner` holds the features (also compiled ahead of time by `compile --evals`)."""

  def scores(params, feats, valid):
    # Padded / unusable rows become copies of the first usable one, so that SimPool's
    # set-wide value shift sees only real examples; their rows and columns are dropped.
    first = jnp.argmax(valid)
    feats = {k: jnp.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, v[first])
             for k, v in feats.items()}
    a_vec, i_vec = embed.vectors(model, params, feats)
    return matrix.score_matrix(config, mesh, feats['audio'], feats['mask'], feats['image'],
                               a_vec, i_vec, head_agg='sum', block=block)

  return jax.jit(scores, in_shardings=(runner.param_shardings, runner.data, runner.repl),
                 out_shardings=runner.repl)


class Retrieval(base.Evaluator):
  type_name = 'retrieval'
  DEFAULTS = dict(dataset='', num_examples=1000, block=None)
  REQUIRED = ('dataset',)

  def __init__(self, *args):
    super().__init__(*args)
    self._scores = None

  def score_fn(self):
    if self._scores is None:
      self._scores = score_fn(self.config, self.ctx.model, self.ctx.mesh, self.ctx.runner,
                              tuple(self.cfg.block or self.config.eval_retrieval_block))
    return self._scores

  def run(self, params, cache) -> base.Output:
    _, res = pairs.PairSet.get(self, params, cache, self.cfg.dataset, self.cfg.num_examples)
    valid = pairs.valid_device_mask(res)
    s = embed.first_replica(self.score_fn()(params, res.features, valid))
    keep = np.flatnonzero(valid)
    m = metrics_lib.retrieval_metrics(s[np.ix_(keep, keep)])
    m['num_examples'] = float(len(keep))
    return base.Output(m)
