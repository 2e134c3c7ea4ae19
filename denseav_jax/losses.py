"""Contrastive losses over the B x B score matrix (SPEC §3).

The matrix compares every audio (rows) with every image (columns) of the *global*
batch; matched pairs are on the diagonal. Regularisers arrive with issue 3.
"""

import jax
import jax.numpy as jnp

LOSS_TYPES = ('nce',)


def nce(score_matrix: jax.Array, cal: jax.Array) -> jax.Array:
  """Symmetric InfoNCE: ½ CE(rows -> diagonal) + ½ CE(columns -> diagonal).

  score_matrix: [B, B] (audio x image); cal: calibrator weight w. The mean of the whole
  matrix is subtracted first (does not change the softmaxes; keeps logits centred).
  """
  logits = cal * score_matrix
  logits = logits - logits.mean()
  diag = jnp.diagonal(logits)
  row = jax.nn.logsumexp(logits, axis=1) - diag
  col = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * row.mean() + 0.5 * col.mean()


def contrastive_loss(score_matrix, cal, loss_type: str = 'nce'):
  if loss_type == 'nce':
    return nce(score_matrix, cal)
  raise ValueError(f'loss.type={loss_type!r} is not one of {LOSS_TYPES}')
