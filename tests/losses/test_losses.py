"""The DenseAV loss (docs/method.md#losses): contrastive losses and every regulariser.

Each reference below is plain numpy (float64, explicit loops where the definition is a
loop), written from docs/method.md#losses and the release's `contrast_loss` / `loss`,
independent of the jnp formulas in denseav_jax/losses/. Sampled terms are checked in two
halves: the samplers (indices valid, distinct, roughly uniform) and the value given the
indices.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import load_config
from denseav_jax.losses import contrastive
from denseav_jax.losses import regularisers
from denseav_jax.losses import objective
from denseav_jax.similarity import dense

# B examples, K heads, H x W grid, F frequency rows, T time steps, C channels.
B, K, H, W, F, T, C = 4, 2, 2, 3, 2, 6, 4

# Audio mask with padding (rows 1-3) and a silent gap (row 3): 9 silent steps in all.
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 0, 0],
                 [1, 0, 0, 0, 0, 0],
                 [1, 0, 1, 1, 0, 0]], bool)
NUM_SILENT = int((~MASK).sum())


def _feats(seed=0, b=B):
  rng = np.random.default_rng(seed)
  audio = rng.normal(size=(b, F, T, C)).astype(np.float32)
  image = rng.normal(size=(b, H, W, C)).astype(np.float32)
  acls = rng.normal(size=(b, C)).astype(np.float32)
  icls = rng.normal(size=(b, C)).astype(np.float32)
  return audio, image, acls, icls


# ------------------------------------------------------------- numpy references

def _np_log_softmax(v):
  v = np.asarray(v, np.float64)
  m = v.max()
  return v - m - np.log(np.sum(np.exp(v - m)))


def _np_labels(b, leak):
  if leak > 0:
    lab = np.full((b, b), leak / (b - 1))
    np.fill_diagonal(lab, 1 - leak)
    return lab / lab.sum(1, keepdims=True)
  return np.eye(b)


def _np_contrastive(s, cal, loss_type, margin=0.0, leak=0.0, bias=0.0):
  s = np.asarray(s, np.float64)
  b = s.shape[0]
  x = cal * s
  if loss_type == 'nce':
    x = x - x.mean()
  else:
    x = x + bias
  x = x - margin * np.eye(b)
  lab = _np_labels(b, leak)
  if loss_type == 'nce':
    rows = [-np.sum(_np_log_softmax(x[i]) * lab[i]) for i in range(b)]
    cols = [-np.sum(_np_log_softmax(x[:, i]) * lab[i]) for i in range(b)]
    return 0.5 * np.mean(rows) + 0.5 * np.mean(cols)
  if loss_type == 'ce':
    rows = [-_np_log_softmax(x[i])[i] for i in range(b)]
    cols = [-_np_log_softmax(x[:, i])[i] for i in range(b)]
    return 0.5 * np.mean(rows) + 0.5 * np.mean(cols)
  if loss_type == 'bce':
    tot = 0.0
    for i in range(b):
      for j in range(b):
        p = 1.0 / (1.0 + np.exp(-x[i, j]))
        tot += -(lab[i, j] * np.log(p) + (1 - lab[i, j]) * np.log(1 - p))
    return tot / b**2
  if loss_type == 'margin':
    tot = 0.0
    for i in range(b):
      for j in range(b):
        tot += max(x[i, j] - x[j, j], 0.0)
    return tot / b**2
  raise AssertionError(loss_type)


def _jnp_contrastive(s, cal, loss_type, margin=0.0, leak=0.0, bias=0.0):
  """The numpy reference transcribed to jnp (materialised labels), for jax.grad."""
  b = s.shape[0]
  x = cal * s
  x = x - x.mean() if loss_type == 'nce' else x + bias
  x = x - margin * jnp.eye(b)
  lab = jnp.asarray(_np_labels(b, leak), jnp.float32)
  if loss_type in ('nce', 'ce'):
    lab = lab if loss_type == 'nce' else jnp.eye(b)
    return (0.5 * jnp.mean(jnp.sum(-jax.nn.log_softmax(x, axis=1) * lab, 1))
            + 0.5 * jnp.mean(jnp.sum(-jax.nn.log_softmax(x.T, axis=1) * lab, 1)))
  if loss_type == 'bce':
    return jnp.mean(-(lab * jax.nn.log_sigmoid(x) + (1 - lab) * jax.nn.log_sigmoid(-x)))
  return jnp.mean(jnp.maximum(x - jnp.diagonal(x)[None, :], 0.0))


def _np_matched_volume(audio, image, mask, k, nonneg, acls=None, icls=None):
  """P[b, k, h, w, f, t] with explicit loops (mask multiplied, CLS added, then clamp)."""
  b_, f_, t_, c_ = audio.shape
  _, h_, w_, _ = image.shape
  d = c_ // k
  p = np.zeros((b_, k, h_, w_, f_, t_))
  for b, kk, h, w, f, t in itertools.product(range(b_), range(k), range(h_), range(w_),
                                             range(f_), range(t_)):
    sl = slice(kk * d, (kk + 1) * d)
    v = float(np.dot(audio[b, f, t, sl].astype(np.float64), image[b, h, w, sl]))
    v *= float(mask[b, t])
    if acls is not None:
      v += float(np.dot(acls[b, sl].astype(np.float64), icls[b, sl]))
    p[b, kk, h, w, f, t] = max(v, 0.0) if nonneg else v
  return p


def _np_tv(p):
  tot, n = 0.0, 0
  for t in range(p.shape[-1] - 1):
    tot += np.sum((p[..., t + 1] - p[..., t]) ** 2)
    n += p[..., t].size
  return tot / n


def _np_neg_audio(p, mask, pos):
  num, den = 0.0, 0.0
  for idx in np.ndindex(*p.shape):
    b, t = idx[0], idx[-1]
    n = (1 - pos[b, t]) * float(mask[b, t])
    num += p[idx] ** 2 * n
    den += n
  return num / max(den, 0.1), den > 0


def _np_mixup(p, image_mask):
  num, den = 0.0, 0.0
  for idx in np.ndindex(*p.shape):
    neg = 1 - image_mask[idx[0], idx[2], idx[3]]
    num += (p[idx] * neg) ** 2
    den += neg
  return num / max(den, 0.1)


def _np_specialization(p):
  k = p.shape[1]
  pairs = list(itertools.combinations(range(k), 2))
  return sum(np.mean(np.abs(p[:, i]) * np.abs(p[:, j])) for i, j in pairs) / len(pairs)


def _np_disentangle(p, source):
  b_, k = p.shape[:2]
  out = np.zeros((b_,) + p.shape[2:])
  for b in range(b_):
    for kk in range(k):
      own = 0 if kk < k // 2 else 1
      if own != source[b]:
        out[b] += p[b, kk]
  return np.mean(out ** 2)


def _np_cal_balance(cal, cal_init):
  return max(np.log(cal_init) - np.log(max(cal, 1e-8)), 0.0) ** 2


def _np_silence(audio, image, b_idx, t_idx, k, nonneg):
  d = audio.shape[-1] // k
  vals = []
  for n in range(len(b_idx)):
    a = audio[b_idx[n], :, t_idx[n]].astype(np.float64).mean(0)  # [C]
    for b in range(image.shape[0]):
      for kk in range(k):
        for h in range(image.shape[1]):
          for w in range(image.shape[2]):
            sl = slice(kk * d, (kk + 1) * d)
            x = float(np.dot(image[b, h, w, sl].astype(np.float64), a[sl]))
            vals.append(max(x, 0.0) if nonneg else x)
  vals = np.array(vals)
  return np.mean(np.abs(vals)), np.mean(vals ** 2)


def _np_nonneg(audio, image, idx, k):
  d = audio.shape[-1] // k
  n = len(idx['b'])
  tot = 0.0
  for i in range(n):
    a = audio[idx['b'][i], idx['f'][i], idx['t'][i]].astype(np.float64)
    for j in range(n):
      v = image[idx['b'][j], idx['h'][j], idx['w'][j]].astype(np.float64)
      for kk in range(k):
        sl = slice(kk * d, (kk + 1) * d)
        tot += min(float(np.dot(a[sl], v[sl])), 0.0) ** 2
  return tot / (n * n * k)


def _score_matrix(seed=0, b=6):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(b, b)).astype(np.float32)  # Not symmetric.
  s[np.arange(b), np.arange(b)] += 1.0
  return s


# ---------------------------------------------------------------- contrastive

CASES = [(t, m, l) for t in contrastive.LOSS_TYPES for m in (0.0, 0.3) for l in (0.0, 0.2)]


@pytest.mark.parametrize('loss_type,margin,leak', CASES)
def test_contrastive_matches_numpy(loss_type, margin, leak):
  s = _score_matrix(1)
  for cal, bias in ((1.0, 0.0), (3.5, -0.7)):
    got = contrastive.contrastive_loss(jnp.asarray(s), jnp.float32(cal), loss_type, margin=margin,
                                  leak=leak, bias=jnp.float32(bias))
    want = _np_contrastive(s, cal, loss_type, margin, leak if loss_type != 'ce' else 0.0,
                           bias)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_nce_alias_and_bias_ignored_by_mean_subtraction():
  s = jnp.asarray(_score_matrix(2))
  np.testing.assert_allclose(float(contrastive.nce(s, 2.0)),
                             float(contrastive.contrastive_loss(s, 2.0, 'nce', bias=5.0)), rtol=1e-6)


def test_calibrate():
  s = _score_matrix(3)
  got = np.asarray(contrastive.calibrate(jnp.asarray(s), 2.0, bias=0.5, subtract_mean=False))
  np.testing.assert_allclose(got, 2.0 * s + 0.5, rtol=1e-6)
  got = np.asarray(contrastive.calibrate(jnp.asarray(s), 2.0))
  np.testing.assert_allclose(got, 2.0 * s - (2.0 * s).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('loss_type,margin,leak', CASES)
def test_contrastive_gradients(loss_type, margin, leak):
  s = jnp.asarray(_score_matrix(4))
  args = (loss_type,)
  kw = dict(margin=margin, leak=leak)

  def ours(s, cal, bias):
    return contrastive.contrastive_loss(s, cal, *args, bias=bias, **kw)

  def ref(s, cal, bias):
    return _jnp_contrastive(s, cal, loss_type, margin, leak if loss_type != 'ce' else 0.0,
                            bias)

  point = (s, jnp.float32(1.7), jnp.float32(0.3))
  got = jax.grad(ours, argnums=(0, 1, 2))(*point)
  want = jax.grad(ref, argnums=(0, 1, 2))(*point)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
  # Finite differences of the float64 numpy reference for d/dcal.
  eps = 1e-4
  s64 = np.asarray(s, np.float64)
  lk = leak if loss_type != 'ce' else 0.0
  fd = (_np_contrastive(s64, 1.7 + eps, loss_type, margin, lk, 0.3)
        - _np_contrastive(s64, 1.7 - eps, loss_type, margin, lk, 0.3)) / (2 * eps)
  np.testing.assert_allclose(float(got[1]), fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('loss_type', contrastive.LOSS_TYPES)
def test_contrastive_stable_for_huge_logits(loss_type):
  s = jnp.asarray(_score_matrix(5)) * 1e3
  val, grads = jax.value_and_grad(contrastive.contrastive_loss, argnums=(0, 1))(
      s, jnp.float32(100.0), loss_type, leak=0.1 if loss_type != 'ce' else 0.0)
  assert np.isfinite(float(val))
  assert np.all(np.isfinite(np.asarray(grads[0]))) and np.isfinite(float(grads[1]))


def test_unknown_loss_type():
  with pytest.raises(ValueError, match=r"loss\.type='nope'.*'nce', 'ce', 'bce', 'margin'"):
    contrastive.contrastive_loss(jnp.zeros((2, 2)), 1.0, 'nope')


def test_contrastive_row_sharded_under_jit():
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  s = _score_matrix(6, b=16)
  s_sharded = jax.device_put(jnp.asarray(s), NamedSharding(mesh, PartitionSpec('data', None)))
  for loss_type in contrastive.LOSS_TYPES:
    fn = jax.jit(lambda x, c, lt=loss_type: contrastive.contrastive_loss(
        x, c, lt, margin=0.2, leak=0.1 if lt != 'ce' else 0.0))
    got = fn(s_sharded, jnp.float32(2.0))
    want = contrastive.contrastive_loss(jnp.asarray(s), jnp.float32(2.0), loss_type, margin=0.2,
                                   leak=0.1 if loss_type != 'ce' else 0.0)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-6)


def test_batch_metrics():
  s = np.zeros((3, 3), np.float32)
  s[0, 0] = s[1, 1] = 1.0
  s[2, 0] = 2.0  # Row 2 picks image 0; column 0 picks audio 2.
  m = contrastive.batch_metrics(jnp.asarray(s))
  np.testing.assert_allclose(float(m['batch_a2i_acc']), 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m['batch_i2a_acc']), 1 / 3, rtol=1e-6)


# ---------------------------------------------------------------- regularisers

@pytest.fixture(scope='module')
def volume():
  audio, image, _, _ = _feats(7)
  return _np_matched_volume(audio, image, MASK, K, nonneg=False)


def test_tv(volume):
  np.testing.assert_allclose(float(regularisers.tv(jnp.asarray(volume))), _np_tv(volume),
                             rtol=1e-5)
  assert float(regularisers.tv(jnp.asarray(volume[..., :1]))) == 0.0


def test_neg_audio(volume):
  rng = np.random.default_rng(8)
  pos = np.clip(rng.uniform(-0.5, 1.5, size=(B, T)), 0, 1).astype(np.float32)
  val, present = regularisers.neg_audio(jnp.asarray(volume), jnp.asarray(MASK), jnp.asarray(pos))
  want, want_present = _np_neg_audio(volume, MASK, pos)
  assert bool(present) == want_present
  np.testing.assert_allclose(float(val), want, rtol=1e-5)


def test_neg_audio_skipped_without_negatives():
  audio, image, _, _ = _feats(9)
  pos = jnp.ones((B, T), jnp.float32)  # No spliced audio anywhere.

  def fn(audio, image):
    p = dense.matched_volume(audio, image, K, False, audio_mask=jnp.asarray(MASK))
    return regularisers.neg_audio(p, jnp.asarray(MASK), pos)[0]

  val = jax.jit(fn)(audio, image)
  grads = jax.jit(jax.grad(fn, argnums=(0, 1)))(audio, image)
  assert float(val) == 0.0
  assert not bool(regularisers.neg_audio(jnp.ones((B, K, H, W, F, T)), jnp.asarray(MASK), pos)[1])
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_mixup(volume):
  rng = np.random.default_rng(10)
  image_mask = (rng.uniform(size=(B, H, W)) > 0.5).astype(np.float32)
  image_mask[0] = 0.25  # Fractional (pooled) values.
  got = regularisers.mixup(jnp.asarray(volume), jnp.asarray(image_mask))
  np.testing.assert_allclose(float(got), _np_mixup(volume, image_mask), rtol=1e-5)
  # The whole image is the true one: nothing to penalise.
  assert float(regularisers.mixup(jnp.asarray(volume), jnp.ones((B, H, W)))) == 0.0


@pytest.mark.parametrize('k', [1, 2, 4])
def test_specialization(k):
  audio, image, _, _ = _feats(11)
  p = _np_matched_volume(audio, image, MASK, k, nonneg=False)
  got = float(regularisers.specialization(jnp.asarray(p)))
  if k == 1:
    assert got == 0.0
  else:
    np.testing.assert_allclose(got, _np_specialization(p), rtol=1e-5)


@pytest.mark.parametrize('k', [2, 4])
def test_disentangle(k):
  audio, image, _, _ = _feats(12)
  p = _np_matched_volume(audio, image, MASK, k, nonneg=False)
  source = np.array([0, 1, 1, 0], np.int32)
  got = float(regularisers.disentangle(jnp.asarray(p), jnp.asarray(source)))
  np.testing.assert_allclose(got, _np_disentangle(p, source), rtol=1e-5)


def test_disentangle_odd_heads():
  with pytest.raises(ValueError, match=r'loss\.weights\.disentangle.*model\.num_heads'):
    regularisers.disentangle(jnp.zeros((2, 3, 1, 1, 1, 2)), jnp.zeros((2,), jnp.int32))


@pytest.mark.parametrize('cal', [0.05, 0.5, 1.0, 3.0, 0.0])
def test_cal_balance(cal):
  for cal_init in (1.0, 2.0):
    got = float(regularisers.cal_balance(jnp.float32(cal), cal_init))
    np.testing.assert_allclose(got, _np_cal_balance(cal, cal_init), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- sampled terms

def test_sample_silent_steps_valid_and_distinct():
  mask = jnp.asarray(MASK)
  for seed in range(5):
    b, t, present = regularisers.sample_silent_steps(mask, jax.random.key(seed), 5)
    b, t = np.asarray(b), np.asarray(t)
    assert bool(present)
    assert not MASK[b, t].any()  # All silent.
    assert len(set(zip(b.tolist(), t.tolist()))) == 5  # Distinct.
  # Exactly as many as silent steps: all of them.
  b, t, present = regularisers.sample_silent_steps(mask, jax.random.key(0), NUM_SILENT)
  assert bool(present)
  assert set(zip(np.asarray(b).tolist(), np.asarray(t).tolist())) == set(
      zip(*np.nonzero(~MASK)))
  # Fewer than asked for (also more than B * T): not present.
  assert not bool(regularisers.sample_silent_steps(mask, jax.random.key(0), NUM_SILENT + 1)[2])
  assert not bool(regularisers.sample_silent_steps(mask, jax.random.key(0), B * T + 1)[2])


def test_sample_silent_steps_uniform():
  n, draws = 3, 3000
  keys = jax.random.split(jax.random.key(13), draws)
  b, t, _ = jax.vmap(lambda k: regularisers.sample_silent_steps(jnp.asarray(MASK), k, n))(keys)
  counts = np.zeros((B, T))
  np.add.at(counts, (np.asarray(b).ravel(), np.asarray(t).ravel()), 1)
  assert counts[MASK].sum() == 0
  expected = draws * n / NUM_SILENT  # 1000 per silent step; sd about 27.
  np.testing.assert_allclose(counts[~MASK], expected, rtol=0.12)


@pytest.mark.parametrize('nonneg', [False, True])
def test_silence_value_and_sampling(nonneg):
  audio, image, _, _ = _feats(14)
  b_idx = np.array([1, 2, 3, 2])
  t_idx = np.array([5, 1, 4, 3])
  got = regularisers.silence_value(jnp.asarray(audio), jnp.asarray(image), jnp.asarray(b_idx),
                             jnp.asarray(t_idx), K, nonneg)
  l1, l2 = _np_silence(audio, image, b_idx, t_idx, K, nonneg)
  np.testing.assert_allclose(float(got['l1']), l1, rtol=1e-5)
  np.testing.assert_allclose(float(got['l2']), l2, rtol=1e-5)
  # silence() = silence_value at sample_silent_steps' indices (same key).
  key = jax.random.key(15)
  vals, present = regularisers.silence(jnp.asarray(audio), jnp.asarray(MASK), jnp.asarray(image), K,
                                 nonneg, key, num_samples=4)
  b, t, _ = regularisers.sample_silent_steps(jnp.asarray(MASK), key, 4)
  l1, l2 = _np_silence(audio, image, np.asarray(b), np.asarray(t), K, nonneg)
  assert bool(present)
  np.testing.assert_allclose(float(vals['l1']), l1, rtol=1e-5)
  np.testing.assert_allclose(float(vals['l2']), l2, rtol=1e-5)


def test_silence_skipped_when_too_few_silent_steps():
  audio, image, _, _ = _feats(16)

  def fn(audio, image, n):
    vals, present = regularisers.silence(audio, jnp.asarray(MASK), image, K, True,
                                   jax.random.key(0), num_samples=n)
    return vals['l1'] + vals['l2'], present

  for n in (NUM_SILENT + 1, 250):
    val, present = jax.jit(fn, static_argnums=2)(audio, image, n)
    assert not bool(present) and float(val) == 0.0
    grads = jax.jit(jax.grad(lambda a, i, n=n: fn(a, i, n)[0], argnums=(0, 1)))(audio, image)
    assert all(np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g)) for g in grads)


def test_sample_pairs():
  idx = regularisers.sample_pairs(jax.random.key(17), (B, F, T, C), (B, H, W, C), 400)
  for name, size in (('b', B), ('f', F), ('t', T), ('h', H), ('w', W)):
    v = np.asarray(idx[name])
    assert v.shape == (400,) and v.min() >= 0 and v.max() < size
    assert len(np.unique(v)) == size  # Every value drawn (with replacement).
  assert not np.array_equal(np.asarray(idx['h']), np.asarray(idx['w']) % H)


def test_nonneg_pressure():
  audio, image, _, _ = _feats(18)
  idx = {k: np.asarray(v) for k, v in
         regularisers.sample_pairs(jax.random.key(19), audio.shape, image.shape, 7).items()}
  got = regularisers.nonneg_pressure_value(jnp.asarray(audio), jnp.asarray(image),
                                     {k: jnp.asarray(v) for k, v in idx.items()}, K)
  np.testing.assert_allclose(float(got), _np_nonneg(audio, image, idx, K), rtol=1e-5)
  full = regularisers.nonneg_pressure(jnp.asarray(audio), jnp.asarray(image), K,
                                jax.random.key(19), num_samples=7)
  np.testing.assert_allclose(float(full), float(got), rtol=1e-6)
  # Non-negative features: no pressure.
  assert float(regularisers.nonneg_pressure(jnp.abs(jnp.asarray(audio)), jnp.abs(jnp.asarray(image)),
                                      K, jax.random.key(0), 7)) == 0.0


# --------------------------------------------------------------- combination

WEIGHTS = dict(tv=0.01, neg_audio=0.02, mixup=0.1, silence_l1=0.03, silence_l2=0.04,
               nonneg_pressure=0.05, cal_balance=0.1, specialization=0.06, disentangle=0.07)


def _config(weights=None, **kw):
  """configs/default.py's loss section with WEIGHTS, then `weights`, and 5 samples."""
  c = load_config('default.py', None).loss
  c.update({'num_samples': 5, **kw})
  c.weights.update({**WEIGHTS, **(weights or {})})
  return c


def _inputs(seed=20):
  audio, image, acls, icls = _feats(seed)
  rng = np.random.default_rng(seed)
  out = dict(audio_feats=jnp.asarray(audio), image_feats=jnp.asarray(image),
             audio_mask=jnp.asarray(MASK), audio_cls=jnp.asarray(acls),
             image_cls=jnp.asarray(icls), cal=jnp.float32(0.6))
  extra = dict(pos_mask=jnp.asarray(rng.uniform(size=(B, T)).round(), jnp.float32),
               image_mask=jnp.asarray(rng.uniform(size=(B, H, W)).round(), jnp.float32),
               source=jnp.asarray([0, 1, 0, 1], jnp.int32))
  s = jnp.asarray(_score_matrix(seed, b=B))
  return s, out, extra


@pytest.mark.parametrize('loss_type,use_cls,nonneg', [('nce', False, False),
                                                       ('bce', True, True)])
def test_loss_terms_total_and_terms(loss_type, use_cls, nonneg):
  s, out, extra = _inputs()
  config = _config(type=loss_type, margin=0.1, leak=0.1)
  key = jax.random.key(21)
  total, terms = objective.loss_terms(s, out, config, num_heads=K, nonneg=nonneg,
                                   use_cls=use_cls, cal_init=1.0, rng=key,
                                   bias=jnp.float32(0.2), **extra)
  assert set(terms) == {loss_type, *regularisers.REGULARISERS}
  # Contrastive.
  want_c = _np_contrastive(np.asarray(s), 0.6, loss_type, 0.1, 0.1, 0.2)
  np.testing.assert_allclose(float(terms[loss_type]), want_c, rtol=1e-5)
  # Volume terms against the numpy volume.
  audio, image = np.asarray(out['audio_feats']), np.asarray(out['image_feats'])
  cls = (np.asarray(out['audio_cls']), np.asarray(out['image_cls'])) if use_cls else ()
  p = _np_matched_volume(audio, image, MASK, K, nonneg, *cls)
  want = dict(tv=_np_tv(p),
              neg_audio=_np_neg_audio(p, MASK, np.asarray(extra['pos_mask']))[0],
              mixup=_np_mixup(p, np.asarray(extra['image_mask'])),
              cal_balance=_np_cal_balance(0.6, 1.0),
              specialization=_np_specialization(p),
              disentangle=_np_disentangle(p, np.asarray(extra['source'])))
  # Sampled terms with the keys loss_terms derives from `rng`.
  k_sil, k_nn = jax.random.split(key)
  b, t, _ = regularisers.sample_silent_steps(jnp.asarray(MASK), k_sil, 5)
  want['silence_l1'], want['silence_l2'] = _np_silence(audio, image, np.asarray(b),
                                                       np.asarray(t), K, nonneg)
  idx = {k: np.asarray(v) for k, v in
         regularisers.sample_pairs(k_nn, audio.shape, image.shape, 5).items()}
  want['nonneg_pressure'] = _np_nonneg(audio, image, idx, K)
  for name, value in want.items():
    np.testing.assert_allclose(float(terms[name]), value, rtol=2e-5, atol=1e-7, err_msg=name)
  weighted = sum(WEIGHTS[name] * want[name] for name in regularisers.REGULARISERS)
  np.testing.assert_allclose(float(total), want_c + weighted, rtol=1e-5)


def test_loss_terms_jit_grad_and_skips():
  s, out, extra = _inputs(22)
  config = _config(dict(neg_audio=0.0, mixup=0.0, disentangle=0.0, specialization=0.0),
                   num_samples=250)

  floats = {k: v for k, v in out.items() if k != 'audio_mask'}

  def fn(s, floats):
    return objective.loss_terms(s, {**floats, 'audio_mask': out['audio_mask']}, config,
                             num_heads=1, nonneg=False, use_cls=False, cal_init=1.0,
                             rng=jax.random.key(0))

  (total, terms), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(
      s, floats)
  # K == 1: no specialization / disentangle; no pos_mask / image_mask / source given.
  assert set(terms) == {'nce', 'tv', 'silence_l1', 'silence_l2', 'nonneg_pressure',
                        'cal_balance'}
  assert float(terms['silence_l1']) == 0.0  # 9 silent steps < 250: skipped.
  want = float(terms['nce']) + sum(WEIGHTS[name] * float(terms[name])
                                   for name in regularisers.REGULARISERS if name in terms)
  np.testing.assert_allclose(float(total), want, rtol=1e-6)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))
  # Release quirk: specialization with K == 1 is silently skipped even when weighted.
  total2, terms2 = objective.loss_terms(s, out, _config(dict(specialization=0.5, neg_audio=0.0,
                                                          mixup=0.0, disentangle=0.0)),
                                     num_heads=1, nonneg=False, use_cls=False, cal_init=1.0,
                                     rng=jax.random.key(0))
  assert 'specialization' not in terms2 and np.isfinite(float(total2))


@pytest.mark.parametrize('drop,match', [
    ('pos_mask', r'loss\.weights\.neg_audio=0\.02 needs a pos_mask'),
    ('image_mask', r'loss\.weights\.mixup=0\.1 needs an image_mask \(enable quad mixup'),
    ('source', r'loss\.weights\.disentangle=0\.07 needs a per-example source'),
])
def test_loss_terms_missing_inputs_raise(drop, match):
  s, out, extra = _inputs()
  extra.pop(drop)
  with pytest.raises(ValueError, match=match):
    objective.loss_terms(s, out, _config(), num_heads=K, nonneg=False, use_cls=False,
                      cal_init=1.0, rng=jax.random.key(0), **extra)
  # At weight 0 the term is just left out.
  name = {'pos_mask': 'neg_audio', 'image_mask': 'mixup', 'source': 'disentangle'}[drop]
  _, terms = objective.loss_terms(s, out, _config({name: 0.0}), num_heads=K, nonneg=False,
                               use_cls=False, cal_init=1.0, rng=jax.random.key(0), **extra)
  assert name not in terms


def test_loss_terms_config_errors():
  s, out, extra = _inputs()
  kw = dict(nonneg=False, use_cls=False, cal_init=1.0, rng=jax.random.key(0), **extra)
  with pytest.raises(ValueError, match=r'loss\.weights\.disentangle=0\.07 needs an even '
                                       r'model\.num_heads \(got 1\)'):
    objective.loss_terms(s, out, _config(), num_heads=1, **kw)
  with pytest.raises(ValueError, match=r'loss\.type'):
    objective.loss_terms(s, out, _config(type='hinge'), num_heads=K, **kw)
  with pytest.raises(ValueError, match=r'loss\.weights\.silence_l1=0\.03 needs an rng'):
    objective.loss_terms(s, out, _config(), num_heads=K, **{**kw, 'rng': None})
  with pytest.raises(ValueError, match=r'sim\.use_cls'):
    objective.loss_terms(s, {**out, 'audio_cls': None}, _config(), num_heads=K,
                      **{**kw, 'use_cls': True})
  # configs/default.py's weights are all 0: the total is the contrastive loss alone.
  config = load_config('default.py', None).loss
  config.type = 'margin'
  total, terms = objective.loss_terms(s, out, config, num_heads=K, **kw)
  np.testing.assert_allclose(float(total), float(terms['margin']), rtol=1e-6)
