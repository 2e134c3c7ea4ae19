"""The contrastive part of DenseAV's loss (docs/method.md#losses): the score matrix S [B, B]
of every audio (rows) against every image (columns) of the global batch, matched pairs on
the diagonal, turned into logits by the calibrator

    X = w * S (+ b) (- mean of the whole matrix)          w = clamp(exp(theta), 0.01, 100)

(the model computes w; here it arrives as `cal`). As in the release, the 'nce' loss uses the
mean subtraction and no bias; 'ce', 'bce' and 'margin' use a learned scalar bias (init 0) and
no mean subtraction. `loss.margin` is then subtracted on the diagonal of X. Every formula is
written with whole-array jnp ops (no Python loop over B), so a row-sharded S works under jit.
"""

import jax
import jax.numpy as jnp

from denseav_jax import errors

LOSS_TYPES = ('nce', 'ce', 'bce', 'margin')


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def check_type(loss_type: str):
  """errors.ConfigError (a ValueError) naming config.loss.type unless it is one of LOSS_TYPES."""
  if loss_type not in LOSS_TYPES:
    raise errors.ConfigError(f'config.loss.type={loss_type!r} is not one of {LOSS_TYPES}')


def check_leak(leak: float):
  if not 0.0 <= leak <= 1.0:
    raise errors.ConfigError(f'config.loss.leak={leak} must lie in [0, 1] (the label mass '
                             'spread over the off-diagonal entries; 0 = none)')


def calibrate(s: jax.Array, cal, bias=None, subtract_mean: bool = True) -> jax.Array:
  """Calibrated logits cal * s (+ bias), minus the mean of the whole matrix if asked.

  The release's SimilarityCalibrator: 'nce' uses subtract_mean=True and no bias; the other
  loss types use a learned scalar bias (init 0) and subtract_mean=False.
  """
  x = _f32(cal) * _f32(s)
  if bias is not None:
    x = x + _f32(bias)
  if subtract_mean:
    x = x - x.mean()
  return x


def _label_weights(b: int, leak: float) -> tuple[float, float]:
  """(diagonal, off-diagonal) entries of the label matrix L, rows summing to 1.

  leak = 0: the identity. Otherwise diag (1 - leak), off-diagonal leak / (B - 1) (the
  release also normalises the rows, which are already exactly 1). B = 1: the identity.
  """
  check_leak(leak)
  if leak == 0.0 or b == 1:
    return 1.0, 0.0
  return 1.0 - leak, leak / (b - 1)


def _soft_ce(x: jax.Array, axis: int, on: float, off: float) -> jax.Array:
  """Mean over the lines along `axis`' complement of sum_j -log_softmax(x)_j * L_j.

  With rows of L summing to 1 the line's value is lse - on * x_ii - off * (sum_j x_ij - x_ii):
  numerically stable (logsumexp) and without materialising L.
  """
  lse = jax.nn.logsumexp(x, axis=axis)
  diag = jnp.diagonal(x)
  value = lse - on * diag
  if off:
    value = value - off * (x.sum(axis=axis) - diag)
  return value.mean()


def contrastive_loss(score_matrix: jax.Array, cal, loss_type: str = 'nce', *,
                     margin: float = 0.0, leak: float = 0.0, bias=None) -> jax.Array:
  """The contrastive loss of a [B, B] score matrix (rows audio, columns images).

  X = calibrate(S, cal, bias, subtract_mean=(loss_type == 'nce')) - margin * I, then
    'nce':    1/2 mean_i sum_j -log_softmax(X, axis=1)[i, j] L[i, j]
              + 1/2 the same for X transposed (same L). L = identity, or with leak > 0
              diag (1 - leak) and off-diagonal leak / (B - 1).
    'ce':     1/2 CE(rows -> diagonal) + 1/2 CE(columns -> diagonal) (leak ignored).
    'bce':    mean over all B^2 entries of BCE-with-logits(X, L) (L as for 'nce').
    'margin': mean over all B^2 entries of max(X[i, j] - X[j, j], 0) (each column compared
              with its diagonal entry, as the release's broadcast `sims - diag(sims)`).
  `bias` (the learned scalar of the non-'nce' calibrator) is added when given.
  """
  check_type(loss_type)
  s = _f32(score_matrix)
  b = s.shape[0]
  x = calibrate(s, cal, bias, subtract_mean=(loss_type == 'nce'))
  if margin:
    x = x - margin * jnp.eye(b, dtype=x.dtype)
  if loss_type == 'nce':
    on, off = _label_weights(b, leak)
    return 0.5 * _soft_ce(x, 1, on, off) + 0.5 * _soft_ce(x, 0, on, off)
  if loss_type == 'ce':
    return 0.5 * _soft_ce(x, 1, 1.0, 0.0) + 0.5 * _soft_ce(x, 0, 1.0, 0.0)
  if loss_type == 'bce':
    on, off = _label_weights(b, leak)
    # BCE(x, y) = softplus(x) - x y; sum_ij x_ij L_ij = on tr(X) + off (sum(X) - tr(X)).
    tr = jnp.trace(x)
    xl = on * tr + off * (x.sum() - tr)
    return jax.nn.softplus(x).mean() - xl / (b * b)
  # 'margin'
  return jnp.maximum(x - jnp.diagonal(x)[None, :], 0.0).mean()


def nce(score_matrix: jax.Array, cal) -> jax.Array:
  """Symmetric InfoNCE (the release's default): contrastive_loss(..., 'nce')."""
  return contrastive_loss(score_matrix, cal, 'nce')


def batch_metrics(score_matrix: jax.Array) -> dict[str, jax.Array]:
  """In-batch retrieval accuracy: a2i (row argmax on the diagonal), i2a (column argmax)."""
  labels = jnp.arange(score_matrix.shape[0])
  return dict(batch_a2i_acc=jnp.mean(jnp.argmax(score_matrix, axis=1) == labels),
              batch_i2a_acc=jnp.mean(jnp.argmax(score_matrix, axis=0) == labels))
