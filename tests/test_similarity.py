"""Similarity volume, aggregation (SPEC §2) and the contrastive loss (SPEC §3).

Every reference here is a naive numpy implementation written from the SPEC's
definitions with explicit loops, independent of the einsum / axis bookkeeping in
denseav_jax/similarity.py.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from denseav_jax import losses
from denseav_jax import similarity

# Tiny shapes: A audios x V images (A != V so transposed outputs cannot pass),
# H x W image grid, F frequency rows, T time steps, C channels.
A, V, H, W, F, T, C = 4, 3, 2, 3, 2, 5, 4

# Uneven valid lengths (5, 3, 1), one row with a single valid step, one with a gap.
MASK = np.array([[1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0],
                 [1, 0, 0, 0, 0],
                 [1, 0, 1, 1, 0]], bool)


def _features(seed=0):
  rng = np.random.default_rng(seed)
  audio = rng.normal(size=(A, F, T, C)).astype(np.float32)
  # Make padded steps large so any leak of masked steps into the result shows.
  audio = np.where(MASK[:, None, :, None], audio, 20.0 * np.abs(audio) + 5.0)
  image = rng.normal(size=(V, H, W, C)).astype(np.float32)
  return audio, image


# ------------------------------------------------------------- naive reference

def _naive_volume_pair(a_feat, i_feat, k_heads, nonneg):
  """S[k, h, w, f, t] for one audio [F, T, C] and one image [H, W, C]."""
  d = C // k_heads
  s = np.zeros((k_heads, H, W, F, T))
  for k in range(k_heads):
    for h in range(H):
      for w in range(W):
        for f in range(F):
          for t in range(T):
            acc = 0.0
            for c in range(k * d, (k + 1) * d):
              acc += float(a_feat[f, t, c]) * float(i_feat[h, w, c])
            s[k, h, w, f, t] = max(acc, 0.0) if nonneg else acc
  return s


def _naive_reduce(s, m, agg):
  """s: [H, W, F, T] for one pair and one head (or heads maxed), m: [T] -> scalar."""
  # Spatial reduction.
  x = np.zeros((F, T))
  for f in range(F):
    for t in range(T):
      vals = [s[h, w, f, t] for h in range(H) for w in range(W)]
      x[f, t] = max(vals) if agg in ('misa', 'mima') else sum(vals) / len(vals)
  # Mean over frequency.
  y = [sum(x[f, t] for f in range(F)) / F for t in range(T)]
  # Time reduction with audio a's mask.
  mf = [float(v) for v in m]
  if agg in ('misa', 'sisa'):
    return sum(y[t] * mf[t] for t in range(T)) / max(sum(mf), 1e-3)
  return max(y[t] - (1.0 - mf[t]) * 1e7 for t in range(T))


def _naive_scores(audio, mask, image, k_heads, agg, head_agg, nonneg):
  n_a, n_v = audio.shape[0], image.shape[0]
  out = np.zeros((n_a, n_v))
  for a in range(n_a):
    for v in range(n_v):
      s = _naive_volume_pair(audio[a], image[v], k_heads, nonneg)
      if head_agg == 'max_elementwise':
        # Max over heads before any reduction, then a sum over the single group.
        merged = np.zeros(s.shape[1:])
        for idx in np.ndindex(*s.shape[1:]):
          merged[idx] = max(s[(k,) + idx] for k in range(k_heads))
        out[a, v] = _naive_reduce(merged, mask[a], agg)
      else:
        per_head = [_naive_reduce(s[k], mask[a], agg) for k in range(k_heads)]
        out[a, v] = sum(per_head) if head_agg == 'sum' else max(per_head)
  return out


@pytest.fixture(scope='module')
def feats():
  return _features()


@pytest.fixture(scope='module')
def naive_cache(feats):
  audio, image = feats
  cache = {}
  for agg, head_agg, k, nonneg in itertools.product(
      similarity.AGGREGATORS, similarity.HEAD_AGGREGATIONS, (1, 2), (False, True)):
    cache[agg, head_agg, k, nonneg] = _naive_scores(audio, MASK, image, k, agg, head_agg,
                                                    nonneg)
  return cache


# ---------------------------------------------------------------------- scores

@pytest.mark.parametrize('nonneg', [False, True])
@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('head_agg', ['max_elementwise', 'sum', 'max'])
@pytest.mark.parametrize('agg', ['misa', 'mima', 'sisa'])
def test_scores_match_naive(feats, naive_cache, agg, head_agg, k, nonneg):
  audio, image = feats
  got = similarity.scores(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image),
                          num_heads=k, agg=agg, head_agg=head_agg, nonneg=nonneg)
  assert got.shape == (A, V)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), naive_cache[agg, head_agg, k, nonneg],
                             rtol=1e-5, atol=1e-4)


def test_reference_distinguishes_the_options(naive_cache):
  """Guards the comparison above: the options must give different answers on this data."""
  for agg in similarity.AGGREGATORS:
    for nonneg in (False, True):
      me, s, mx = (naive_cache[agg, h, 2, nonneg] for h in similarity.HEAD_AGGREGATIONS)
      assert not np.allclose(me, s) and not np.allclose(me, mx) and not np.allclose(s, mx)
  for h in similarity.HEAD_AGGREGATIONS:
    misa, mima, sisa = (naive_cache[a, h, 2, False] for a in similarity.AGGREGATORS)
    assert not np.allclose(misa, mima) and not np.allclose(misa, sisa)
    assert not np.allclose(naive_cache['sisa', h, 2, False], naive_cache['sisa', h, 2, True])
    # With K = 1 the three head aggregations coincide.
    assert np.allclose(naive_cache['misa', 'max_elementwise', 1, False],
                       naive_cache['misa', 'sum', 1, False])


def test_single_valid_step_row_uses_only_that_step(feats):
  """Row 2 has one valid step (t=0): misa/mima/sisa reduce to that step's value."""
  audio, image = feats
  for agg in ('misa', 'mima'):
    got = similarity.scores(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image),
                            agg=agg)
    want = np.einsum('fc,vhwc->vhwf', audio[2, :, 0], image).max(axis=(1, 2)).mean(-1)
    np.testing.assert_allclose(np.asarray(got[2]), want, rtol=1e-5, atol=1e-5)


def test_masked_helpers():
  x = jnp.array([[1.0, 2.0, 30.0], [4.0, 5.0, 6.0]])
  m = jnp.array([[True, True, False], [False, False, False]])
  np.testing.assert_allclose(similarity.masked_mean(x, m, axis=-1), [1.5, 0.0])
  np.testing.assert_allclose(similarity.masked_max(x, m, axis=-1)[0], 2.0)
  # An all-masked row: max(x - 1e7) (finite, hugely negative).
  np.testing.assert_allclose(similarity.masked_max(x, m, axis=-1)[1], 6.0 - 1e7, rtol=1e-6)


def test_volume_matches_naive(feats):
  audio, image = feats
  for k, nonneg in itertools.product((1, 2), (False, True)):
    vol = np.asarray(similarity.volume(jnp.asarray(audio), jnp.asarray(image), k, nonneg))
    assert vol.shape == (A, V, k, H, W, F, T)
    for a in range(A):
      for v in range(V):
        np.testing.assert_allclose(vol[a, v], _naive_volume_pair(audio[a], image[v], k, nonneg),
                                   rtol=1e-5, atol=1e-4)
    if nonneg:
      assert vol.min() == 0.0


@pytest.mark.parametrize('nonneg', [False, True])
@pytest.mark.parametrize('k', [1, 2])
def test_matched_volume_is_volume_diagonal(k, nonneg):
  rng = np.random.default_rng(1)
  b = 3
  audio = jnp.asarray(rng.normal(size=(b, F, T, C)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(b, H, W, C)), jnp.float32)
  full = np.asarray(similarity.volume(audio, image, k, nonneg))
  matched = np.asarray(similarity.matched_volume(audio, image, k, nonneg))
  assert matched.shape == (b, k, H, W, F, T)
  diag = np.stack([full[i, i] for i in range(b)])
  np.testing.assert_allclose(matched, diag, rtol=1e-6, atol=1e-6)
  # Off-diagonal pairs differ (so the comparison is not vacuous).
  assert not np.allclose(matched, np.stack([full[i, (i + 1) % b] for i in range(b)]))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(num_heads=2, agg='mima', head_agg='sum', nonneg=True),
    dict(num_heads=2, agg='sisa', head_agg='max'),
])
def test_blocked_scores_equal_scores(kwargs):
  rng = np.random.default_rng(2)
  n = 7  # Not a multiple of the block of 3.
  audio = jnp.asarray(rng.normal(size=(n, F, T, C)), jnp.float32)
  lengths = np.array([5, 1, 3, 4, 2, 5, 1])
  mask = jnp.asarray(np.arange(T)[None] < lengths[:, None])
  image = jnp.asarray(rng.normal(size=(V, H, W, C)), jnp.float32)
  want = similarity.scores(audio, mask, image, **kwargs)
  got = similarity.blocked_scores(audio, mask, image, block=3, **kwargs)
  assert got.shape == (n, V)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_bad_options_raise(feats):
  audio, image = feats
  with pytest.raises(ValueError):
    similarity.scores(audio, MASK, image, agg='nope')
  with pytest.raises(ValueError):
    similarity.scores(audio, MASK, image, num_heads=2, head_agg='nope')
  with pytest.raises(ValueError):
    similarity.scores(audio, MASK, image, num_heads=3)  # 4 channels, 3 heads.


# ------------------------------------------------------------------------ loss

def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _naive_nce(s, cal):
  logits = cal * np.asarray(s, np.float64)
  logits = logits - logits.mean()
  b = logits.shape[0]
  row = [-_log_softmax(logits[i, :])[i] for i in range(b)]
  col = [-_log_softmax(logits[:, j])[j] for j in range(b)]
  return 0.5 * np.mean(row) + 0.5 * np.mean(col)


@pytest.mark.parametrize('cal', [0.5, 1.0, 7.0])
def test_nce_matches_numpy(cal):
  rng = np.random.default_rng(3)
  s = rng.normal(size=(5, 5)).astype(np.float32)  # Not symmetric: rows != columns.
  s[np.arange(5), np.arange(5)] += 1.0
  got = losses.nce(jnp.asarray(s), jnp.asarray(cal, jnp.float32))
  np.testing.assert_allclose(float(got), _naive_nce(s, cal), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(losses.contrastive_loss(jnp.asarray(s), cal, 'nce')),
                             float(got), rtol=1e-6)


def test_nce_row_and_column_terms_both_count():
  # A matrix whose row-CE and column-CE differ a lot.
  s = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  logits = s - s.mean()
  row = np.mean([-_log_softmax(logits[i])[i] for i in range(3)])
  col = np.mean([-_log_softmax(logits[:, j])[j] for j in range(3)])
  assert abs(row - col) > 0.1
  np.testing.assert_allclose(float(losses.nce(jnp.asarray(s), 1.0)), 0.5 * (row + col),
                             rtol=1e-5)


def test_nce_gradient_finite_and_diagonal_helps():
  rng = np.random.default_rng(4)
  s = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)
  for scale, cal in ((1.0, 1.0), (1e3, 100.0)):  # Also large logits.
    g_s, g_cal = jax.grad(losses.nce, argnums=(0, 1))(s * scale, jnp.float32(cal))
    assert np.all(np.isfinite(np.asarray(g_s))) and np.isfinite(float(g_cal))
  g_s = np.asarray(jax.grad(losses.nce)(s, jnp.float32(1.0)))
  assert np.all(np.diag(g_s) < 0)  # Raising a matched score lowers the loss.
  base = float(losses.nce(s, 1.0))
  better = float(losses.nce(s + 0.5 * jnp.eye(6), 1.0))
  assert better < base
  worse = float(losses.nce(s - 0.5 * jnp.eye(6), 1.0))
  assert worse > base


def test_unknown_loss_type_raises():
  with pytest.raises(ValueError):
    losses.contrastive_loss(jnp.zeros((2, 2)), 1.0, 'nope')
