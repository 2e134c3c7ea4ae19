"""Similarity volume, aggregation (docs/method.md#aggregators) and the contrastive loss
(docs/method.md#losses).

Every reference here is a naive numpy implementation written from the definitions in
docs/method.md with explicit loops, independent of the einsum / axis bookkeeping in
denseav_jax/similarity/dense.py.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from denseav_jax.losses import contrastive
from denseav_jax.similarity import dense

# Tiny shapes: A audios x V images (A != V so transposed outputs cannot pass),
# H x W image grid, F frequency rows, T time steps, C channels.
A, V, H, W, F, T, C = 4, 3, 2, 3, 2, 5, 4

VOLUME_AGGS = ('misa', 'mima', 'sisa', 'paired')
POOLED_AGGS = ('cavmae', 'imagebind', 'simpool')
HEAD_AGGS = ('max_elementwise', 'sum', 'max')

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


def _cls(seed=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(A, C)).astype(np.float32),
          rng.normal(size=(V, C)).astype(np.float32))


def test_option_names():
  assert dense.AGGREGATORS == VOLUME_AGGS + POOLED_AGGS
  assert dense.VOLUME_AGGREGATORS == VOLUME_AGGS
  assert dense.POOLED_AGGREGATORS == POOLED_AGGS
  assert dense.HEAD_AGGREGATIONS == HEAD_AGGS


# ------------------------------------------------------------- naive reference

def _dot(x, y, lo, hi):
  return sum(float(x[c]) * float(y[c]) for c in range(lo, hi))


def _naive_volume_pair(a_feat, i_feat, k_heads, nonneg, a_cls=None, i_cls=None):
  """S[k, h, w, f, t] for one audio [F, T, C] and one image [H, W, C].

  With CLS vectors ([C] each) the per-head CLS . CLS is added to every entry
  before the clamp.
  """
  d = C // k_heads
  s = np.zeros((k_heads, H, W, F, T))
  for k in range(k_heads):
    cls_term = 0.0 if a_cls is None else _dot(a_cls, i_cls, k * d, (k + 1) * d)
    for h in range(H):
      for w in range(W):
        for f in range(F):
          for t in range(T):
            acc = _dot(a_feat[f, t], i_feat[h, w], k * d, (k + 1) * d) + cls_term
            s[k, h, w, f, t] = max(acc, 0.0) if nonneg else acc
  return s


def _masked_mean_list(y, mf):
  return sum(y[t] * mf[t] for t in range(T)) / max(sum(mf), 1e-3)


def _masked_max_list(y, mf):
  return max(y[t] - (1.0 - mf[t]) * 1e7 for t in range(T))


def _naive_reduce(s, m, agg):
  """s: [H, W, F, T] for one pair and one head (or heads maxed), m: [T] -> scalar."""
  mf = [float(v) for v in m]
  if agg == 'paired':
    # 1/2 misa + 1/2 (mean over f; masked max over t; mean over h, w).
    other = 0.0
    for h in range(H):
      for w in range(W):
        y = [sum(s[h, w, f, t] for f in range(F)) / F for t in range(T)]
        other += _masked_max_list(y, mf)
    return 0.5 * _naive_reduce(s, m, 'misa') + 0.5 * other / (H * W)
  # Spatial reduction.
  x = np.zeros((F, T))
  for f in range(F):
    for t in range(T):
      vals = [s[h, w, f, t] for h in range(H) for w in range(W)]
      x[f, t] = max(vals) if agg in ('misa', 'mima') else sum(vals) / len(vals)
  # Mean over frequency.
  y = [sum(x[f, t] for f in range(F)) / F for t in range(T)]
  # Time reduction with audio a's mask.
  if agg in ('misa', 'sisa'):
    return _masked_mean_list(y, mf)
  assert agg == 'mima'
  return _masked_max_list(y, mf)


def _naive_volumes(audio, image, k_heads, nonneg, cls=None):
  """{(a, v): S[k, h, w, f, t]} for every pair."""
  return {(a, v): _naive_volume_pair(audio[a], image[v], k_heads, nonneg,
                                     None if cls is None else cls[0][a],
                                     None if cls is None else cls[1][v])
          for a in range(audio.shape[0]) for v in range(image.shape[0])}


def _naive_per_head(vols, mask, agg, head_agg):
  """[A, V, K'] per-head scores (K' = 1 for max_elementwise) from precomputed volumes."""
  n_a = 1 + max(a for a, _ in vols)
  n_v = 1 + max(v for _, v in vols)
  k_heads = next(iter(vols.values())).shape[0]
  out = np.zeros((n_a, n_v, 1 if head_agg == 'max_elementwise' else k_heads))
  for (a, v), s in vols.items():
    if head_agg == 'max_elementwise':
      # Max over heads before any reduction.
      merged = np.zeros(s.shape[1:])
      for idx in np.ndindex(*s.shape[1:]):
        merged[idx] = max(s[(k,) + idx] for k in range(k_heads))
      out[a, v, 0] = _naive_reduce(merged, mask[a], agg)
    else:
      for k in range(k_heads):
        out[a, v, k] = _naive_reduce(s[k], mask[a], agg)
  return out


def _naive_combine(per_head, head_agg):
  out = np.zeros(per_head.shape[:2])
  for a, v in np.ndindex(*out.shape):
    vals = list(per_head[a, v])
    out[a, v] = max(vals) if head_agg == 'max' else sum(vals)
  return out


def _naive_pooled(audio, image, a_cls, i_cls, agg):
  """[A, V] scores of the single-vector aggregators."""
  n_a, n_v = audio.shape[0], image.shape[0]
  out = np.zeros((n_a, n_v))
  if agg == 'cavmae':
    def pool_norm(cells):  # Plain (unmasked) mean, then L2-normalise with eps 1e-12.
      mean = [sum(float(cell[c]) for cell in cells) / len(cells) for c in range(C)]
      norm = max(math.sqrt(sum(x * x for x in mean)), 1e-12)
      return [x / norm for x in mean]
    pa = [pool_norm([audio[a, f, t] for f in range(F) for t in range(T)])
          for a in range(n_a)]
    pv = [pool_norm([image[v, h, w] for h in range(H) for w in range(W)])
          for v in range(n_v)]
  else:  # imagebind / simpool: the given vectors, full-width dot product.
    pa, pv = a_cls, i_cls
  for a in range(n_a):
    for v in range(n_v):
      out[a, v] = _dot(pa[a], pv[v], 0, C)
  return out


@pytest.fixture(scope='module')
def feats():
  return _features()


@pytest.fixture(scope='module')
def cls_vecs():
  return _cls()


@pytest.fixture(scope='module')
def naive_vols(feats, cls_vecs):
  audio, image = feats
  return {(k, nonneg, use_cls): _naive_volumes(audio, image, k, nonneg,
                                               cls_vecs if use_cls else None)
          for k, nonneg, use_cls in itertools.product((1, 2), (False, True), (False, True))}


@pytest.fixture(scope='module')
def naive_cache(naive_vols):
  """(agg, head_agg, k, nonneg, use_cls) -> ([A, V] scores, [A, V, K'] per-head)."""
  cache = {}
  for agg, head_agg, k, nonneg, use_cls in itertools.product(
      VOLUME_AGGS, HEAD_AGGS, (1, 2), (False, True), (False, True)):
    per_head = _naive_per_head(naive_vols[k, nonneg, use_cls], MASK, agg, head_agg)
    cache[agg, head_agg, k, nonneg, use_cls] = (_naive_combine(per_head, head_agg), per_head)
  return cache


def _scores(feats, cls_vecs, mask=MASK, **kwargs):
  audio, image = feats
  return dense.scores(jnp.asarray(audio), jnp.asarray(mask), jnp.asarray(image),
                           audio_cls=jnp.asarray(cls_vecs[0]),
                           image_cls=jnp.asarray(cls_vecs[1]), **kwargs)


# ---------------------------------------------------------------------- scores

@pytest.mark.parametrize('use_cls', [False, True])
@pytest.mark.parametrize('nonneg', [False, True])
@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('head_agg', HEAD_AGGS)
@pytest.mark.parametrize('agg', VOLUME_AGGS)
def test_scores_match_naive(feats, cls_vecs, naive_cache, agg, head_agg, k, nonneg, use_cls):
  got = _scores(feats, cls_vecs, num_heads=k, agg=agg, head_agg=head_agg, nonneg=nonneg,
                use_cls=use_cls)
  assert got.shape == (A, V)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), naive_cache[agg, head_agg, k, nonneg, use_cls][0],
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('agg', VOLUME_AGGS)
def test_scores_without_silence_mask_match_naive(feats, cls_vecs, naive_vols, naive_cache, agg):
  """mask_silence=False reduces as if every step were valid (all-ones mask)."""
  ones = np.ones_like(MASK)
  for head_agg, use_cls in (('max_elementwise', False), ('sum', True)):
    got = np.asarray(_scores(feats, cls_vecs, num_heads=2, agg=agg, head_agg=head_agg,
                             use_cls=use_cls, mask_silence=False))
    want = _naive_combine(_naive_per_head(naive_vols[2, False, use_cls], ones, agg, head_agg),
                          head_agg)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # The padded steps are large, so ignoring the mask must change the answer.
    assert not np.allclose(got, naive_cache[agg, head_agg, 2, False, use_cls][0])
    # Row 0 is fully valid: the mask never mattered there.
    np.testing.assert_allclose(got[0], naive_cache[agg, head_agg, 2, False, use_cls][0][0],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('head_agg', HEAD_AGGS)
@pytest.mark.parametrize('agg', VOLUME_AGGS)
def test_per_head_scores(feats, cls_vecs, naive_cache, agg, head_agg):
  k = 2
  for use_cls in (False, True):
    got = np.asarray(_scores(feats, cls_vecs, num_heads=k, agg=agg, head_agg=head_agg,
                             use_cls=use_cls, per_head=True))
    assert got.shape == (A, V, 1 if head_agg == 'max_elementwise' else k)
    want_scores, want_per_head = naive_cache[agg, head_agg, k, False, use_cls]
    np.testing.assert_allclose(got, want_per_head, rtol=1e-5, atol=1e-4)
    # combine_heads of the per-head scores gives the scores.
    np.testing.assert_allclose(np.asarray(dense.combine_heads(jnp.asarray(got), head_agg)),
                               want_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('agg', POOLED_AGGS)
def test_pooled_scores_match_naive(feats, cls_vecs, agg):
  audio, image = feats
  want = _naive_pooled(audio, image, cls_vecs[0], cls_vecs[1], agg)
  for k, head_agg, use_cls in ((1, 'max_elementwise', False), (2, 'sum', True), (4, 'max', False)):
    # Pooled aggregators have one "head": num_heads / head_agg / use_cls do not matter.
    got = _scores(feats, cls_vecs, num_heads=k, agg=agg, head_agg=head_agg, use_cls=use_cls)
    assert got.shape == (A, V) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    per_head = _scores(feats, cls_vecs, num_heads=k, agg=agg, head_agg=head_agg,
                       per_head=True)
    assert per_head.shape == (A, V, 1)
    np.testing.assert_allclose(np.asarray(per_head)[..., 0], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(dense.pooled_scores(jnp.asarray(audio), jnp.asarray(image),
                                          jnp.asarray(cls_vecs[0]), jnp.asarray(cls_vecs[1]),
                                          agg)), want, rtol=1e-5, atol=1e-5)
  if agg == 'cavmae':
    # Cosines, and unmasked: the padded (large) steps count in the audio mean.
    assert np.all(np.abs(want) <= 1.0 + 1e-6)
    masked_mean = np.stack([audio[a][:, MASK[a]].mean(axis=(0, 1)) for a in range(A)])
    masked_mean /= np.linalg.norm(masked_mean, axis=-1, keepdims=True)
    pooled_img = image.mean(axis=(1, 2))
    pooled_img /= np.linalg.norm(pooled_img, axis=-1, keepdims=True)
    assert not np.allclose(want, masked_mean @ pooled_img.T, atol=1e-3)


def test_cavmae_zero_features_give_zero_not_nan():
  audio = jnp.zeros((2, F, T, C))
  image = jnp.ones((3, H, W, C))
  got = dense.scores(audio, jnp.ones((2, T), bool), image, agg='cavmae')
  assert got.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(got), 0.0)


def test_pooled_vectors_required(feats):
  audio, image = feats
  for agg in ('imagebind', 'simpool'):
    with pytest.raises(ValueError):
      dense.scores(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image), agg=agg)
  with pytest.raises(ValueError):
    dense.scores(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image), use_cls=True)


def test_reference_distinguishes_the_options(naive_cache):
  """Guards the comparison above: the options must give different answers on this data."""
  def s(*key):
    return naive_cache[key][0]
  for agg, nonneg, use_cls in itertools.product(VOLUME_AGGS, (False, True), (False, True)):
    me, sm, mx = (s(agg, h, 2, nonneg, use_cls) for h in HEAD_AGGS)
    assert not np.allclose(me, sm) and not np.allclose(me, mx) and not np.allclose(sm, mx)
  for h, use_cls in itertools.product(HEAD_AGGS, (False, True)):
    per_agg = [s(a, h, 2, False, use_cls) for a in VOLUME_AGGS]
    for x, y in itertools.combinations(per_agg, 2):
      assert not np.allclose(x, y)
    for agg in VOLUME_AGGS:
      # The CLS term changes every aggregator's answer; the clamp changes those that
      # average over space (a spatial max of this data is already positive).
      if agg in ('sisa', 'paired'):
        assert not np.allclose(s(agg, h, 2, False, use_cls), s(agg, h, 2, True, use_cls))
      assert not np.allclose(s(agg, h, 2, False, False), s(agg, h, 2, False, True))
      # With K = 1 the three head aggregations coincide.
      np.testing.assert_allclose(s(agg, 'max_elementwise', 1, False, use_cls),
                                 s(agg, h, 1, False, use_cls))
  # paired is neither of its halves.
  for half in ('misa', 'mima'):
    assert not np.allclose(s('paired', 'sum', 2, False, False), s(half, 'sum', 2, False, False))


def test_single_valid_step_row_uses_only_that_step(feats):
  """Row 2 has one valid step (t=0): misa/mima/sisa reduce to that step's value."""
  audio, image = feats
  for agg in ('misa', 'mima'):
    got = dense.scores(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image),
                            agg=agg)
    want = np.einsum('fc,vhwc->vhwf', audio[2, :, 0], image).max(axis=(1, 2)).mean(-1)
    np.testing.assert_allclose(np.asarray(got[2]), want, rtol=1e-5, atol=1e-5)


def test_masked_helpers():
  x = jnp.array([[1.0, 2.0, 30.0], [4.0, 5.0, 6.0]])
  m = jnp.array([[True, True, False], [False, False, False]])
  np.testing.assert_allclose(dense.masked_mean(x, m, axis=-1), [1.5, 0.0])
  np.testing.assert_allclose(dense.masked_max(x, m, axis=-1)[0], 2.0)
  # An all-masked row: max(x - 1e7) (finite, hugely negative).
  np.testing.assert_allclose(dense.masked_max(x, m, axis=-1)[1], 6.0 - 1e7, rtol=1e-6)


def test_volume_matches_naive(feats, cls_vecs, naive_vols):
  audio, image = feats
  for k, nonneg, use_cls in itertools.product((1, 2), (False, True), (False, True)):
    cls_args = (jnp.asarray(cls_vecs[0]), jnp.asarray(cls_vecs[1])) if use_cls else ()
    vol = np.asarray(dense.volume(jnp.asarray(audio), jnp.asarray(image), k, nonneg,
                                       *cls_args))
    assert vol.shape == (A, V, k, H, W, F, T)
    for a in range(A):
      for v in range(V):
        np.testing.assert_allclose(vol[a, v], naive_vols[k, nonneg, use_cls][a, v],
                                   rtol=1e-5, atol=1e-4)
    if nonneg:
      assert vol.min() == 0.0
  cls = dense.cls_sims(jnp.asarray(cls_vecs[0]), jnp.asarray(cls_vecs[1]), 2)
  assert cls.shape == (A, V, 2)
  for a, v, k in np.ndindex(A, V, 2):
    np.testing.assert_allclose(float(cls[a, v, k]),
                               _dot(cls_vecs[0][a], cls_vecs[1][v], 2 * k, 2 * k + 2),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('nonneg', [False, True])
@pytest.mark.parametrize('k', [1, 2])
def test_matched_volume_is_volume_diagonal(k, nonneg):
  rng = np.random.default_rng(1)
  b = 3
  audio = jnp.asarray(rng.normal(size=(b, F, T, C)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(b, H, W, C)), jnp.float32)
  a_cls = jnp.asarray(rng.normal(size=(b, C)), jnp.float32)
  i_cls = jnp.asarray(rng.normal(size=(b, C)), jnp.float32)
  for cls_args in ((), (a_cls, i_cls)):
    full = np.asarray(dense.volume(audio, image, k, nonneg, *cls_args))
    matched = np.asarray(dense.matched_volume(audio, image, k, nonneg, None, *cls_args))
    assert matched.shape == (b, k, H, W, F, T)
    diag = np.stack([full[i, i] for i in range(b)])
    np.testing.assert_allclose(matched, diag, rtol=1e-6, atol=1e-6)
    # Off-diagonal pairs differ (so the comparison is not vacuous).
    assert not np.allclose(matched, np.stack([full[i, (i + 1) % b] for i in range(b)]))


@pytest.mark.parametrize('nonneg', [False, True])
@pytest.mark.parametrize('k', [1, 2])
def test_masked_matched_volume_matches_naive(k, nonneg):
  """P = mask * (A . I), then + CLS . CLS per head (after the mask), then the clamp."""
  rng = np.random.default_rng(6)
  b, d = 3, C // k
  audio = rng.normal(size=(b, F, T, C)).astype(np.float32)
  image = rng.normal(size=(b, H, W, C)).astype(np.float32)
  a_cls = rng.normal(size=(b, C)).astype(np.float32)
  i_cls = rng.normal(size=(b, C)).astype(np.float32)
  mask = MASK[:b]
  got = np.asarray(dense.matched_volume(
      jnp.asarray(audio), jnp.asarray(image), k, nonneg, audio_mask=jnp.asarray(mask),
      audio_cls=jnp.asarray(a_cls), image_cls=jnp.asarray(i_cls)))
  assert got.shape == (b, k, H, W, F, T)
  want = np.zeros((b, k, H, W, F, T))
  for i, kk, h, w, f, t in np.ndindex(*want.shape):
    lo, hi = kk * d, (kk + 1) * d
    x = _dot(audio[i, f, t], image[i, h, w], lo, hi) * float(mask[i, t])
    x += _dot(a_cls[i], i_cls[i], lo, hi)
    want[i, kk, h, w, f, t] = max(x, 0.0) if nonneg else x
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A masked step keeps the CLS term (it is not masked away).
  i, t = 1, 4
  assert not mask[i, t]
  for kk in range(k):
    c = _dot(a_cls[i], i_cls[i], kk * d, (kk + 1) * d)
    np.testing.assert_allclose(got[i, kk, ..., t], max(c, 0.0) if nonneg else c,
                               rtol=1e-5, atol=1e-5)
  # Without CLS the masked steps are exactly zero.
  plain = np.asarray(dense.matched_volume(jnp.asarray(audio), jnp.asarray(image), k,
                                               nonneg, audio_mask=jnp.asarray(mask)))
  assert np.all(plain[~mask[:, None, None, None, None, :].repeat(k, 1)
                      .repeat(H, 2).repeat(W, 3).repeat(F, 4)] == 0.0)


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(num_heads=2, agg='mima', head_agg='sum', nonneg=True),
    dict(num_heads=2, agg='sisa', head_agg='max'),
    dict(num_heads=2, agg='paired', head_agg='sum'),
    dict(agg='misa', mask_silence=False),
    dict(agg='cavmae'),
])
def test_blocked_scores_equal_scores(kwargs):
  rng = np.random.default_rng(2)
  n = 7  # Not a multiple of the block of 3.
  audio = jnp.asarray(rng.normal(size=(n, F, T, C)), jnp.float32)
  lengths = np.array([5, 1, 3, 4, 2, 5, 1])
  mask = jnp.asarray(np.arange(T)[None] < lengths[:, None])
  image = jnp.asarray(rng.normal(size=(V, H, W, C)), jnp.float32)
  want = dense.scores(audio, mask, image, **kwargs)
  got = dense.blocked_scores(audio, mask, image, block=3, **kwargs)
  assert got.shape == (n, V)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_bad_options_raise(feats):
  audio, image = feats
  with pytest.raises(ValueError):
    dense.scores(audio, MASK, image, agg='nope')
  with pytest.raises(ValueError):
    dense.scores(audio, MASK, image, num_heads=2, head_agg='nope')
  with pytest.raises(ValueError):
    dense.scores(audio, MASK, image, num_heads=3)  # 4 channels, 3 heads.
  with pytest.raises(ValueError, match='sim.agg'):
    dense.check_options('nope', 'sum', 1)
  with pytest.raises(ValueError, match='sim.head_agg'):
    dense.check_options('misa', 'nope', 1)
  with pytest.raises(ValueError, match='num_heads'):
    dense.check_options('misa', 'sum', 3, 4)
  dense.check_options('paired', 'max', 2, 4)  # Valid: no error.
  with pytest.raises(ValueError):
    dense.reduce_volume(jnp.zeros((1, 1, H, W, F, T)), jnp.ones((1, T)), 'cavmae')


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
  got = contrastive.nce(jnp.asarray(s), jnp.asarray(cal, jnp.float32))
  np.testing.assert_allclose(float(got), _naive_nce(s, cal), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(contrastive.contrastive_loss(jnp.asarray(s), cal, 'nce')),
                             float(got), rtol=1e-6)


def test_nce_row_and_column_terms_both_count():
  # A matrix whose row-CE and column-CE differ a lot.
  s = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  logits = s - s.mean()
  row = np.mean([-_log_softmax(logits[i])[i] for i in range(3)])
  col = np.mean([-_log_softmax(logits[:, j])[j] for j in range(3)])
  assert abs(row - col) > 0.1
  np.testing.assert_allclose(float(contrastive.nce(jnp.asarray(s), 1.0)), 0.5 * (row + col),
                             rtol=1e-5)


def test_nce_gradient_finite_and_diagonal_helps():
  rng = np.random.default_rng(4)
  s = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)
  for scale, cal in ((1.0, 1.0), (1e3, 100.0)):  # Also large logits.
    g_s, g_cal = jax.grad(contrastive.nce, argnums=(0, 1))(s * scale, jnp.float32(cal))
    assert np.all(np.isfinite(np.asarray(g_s))) and np.isfinite(float(g_cal))
  g_s = np.asarray(jax.grad(contrastive.nce)(s, jnp.float32(1.0)))
  assert np.all(np.diag(g_s) < 0)  # Raising a matched score lowers the loss.
  base = float(contrastive.nce(s, 1.0))
  better = float(contrastive.nce(s + 0.5 * jnp.eye(6), 1.0))
  assert better < base
  worse = float(contrastive.nce(s - 0.5 * jnp.eye(6), 1.0))
  assert worse > base


def test_unknown_loss_type_raises():
  with pytest.raises(ValueError):
    contrastive.contrastive_loss(jnp.zeros((2, 2)), 1.0, 'nope')
