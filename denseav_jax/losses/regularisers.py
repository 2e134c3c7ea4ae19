"""DenseAV's regularisers (docs/method.md#regularisers). Most act on the matched-pair volume
(see `denseav_jax.similarity.dense.matched_volume`)

    P[b, k, h, w, f, t] = sum_c A[b, f, t, k, c] I[b, h, w, k, c] m[b, t]   (+ CLS term) (clamp)

with the audio mask m multiplied in; silence and nonneg_pressure sample audio steps and
image positions. Each is a separate function returning an fp32 scalar; objective.loss_terms
weighs them with loss.weights.NAME. Names and release weights:
  tv               0.01
  neg_audio        0.01   (needs pos_mask)
  mixup            0.1    (needs image_mask)
  silence_l1/_l2   0.01 / 0
  nonneg_pressure  0.01
  cal_balance      0.1
  specialization   0.05   (K > 1 only; K == 1 adds nothing)
  disentangle      0      (needs source and even K)
"""

import jax
import jax.numpy as jnp

from denseav_jax.similarity import dense

HIGHEST = jax.lax.Precision.HIGHEST
NUM_SAMPLES = 250  # Release: n_samples for silence_* and nonneg_pressure.
CAL_FLOOR = 1e-8  # cal_balance: log(max(w, 1e-8)).
WEIGHT_FLOOR = 0.1  # neg_audio / mixup: sum(...) / max(sum(weights), 0.1).

# The regularisers' names: their terms, their loss.weights keys and their logged names.
REGULARISERS = ('tv', 'neg_audio', 'mixup', 'silence_l1', 'silence_l2', 'nonneg_pressure',
                'cal_balance', 'specialization', 'disentangle')


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def tv(p: jax.Array) -> jax.Array:
  """Temporal smoothness: mean of (P[..., t+1] - P[..., t])^2 (0 when T < 2)."""
  p = _f32(p)
  if p.shape[-1] < 2:
    return jnp.zeros((), jnp.float32)
  return jnp.square(p[..., 1:] - p[..., :-1]).mean()


def neg_audio(p: jax.Array, audio_mask, pos_mask) -> tuple[jax.Array, jax.Array]:
  """Matched similarity on spliced-in negative audio (docs/method.md#regularisers; the
  splicing: docs/data.md#negative-audio-splicing).

  n[b, t] = (1 - pos_mask) * audio_mask broadcast to P's shape;
  value = sum(P^2 n) / max(sum(n), 0.1) with both sums over P's whole shape.
  Returns (value, present) with present = sum(n) > 0; when no negative audio exists the
  release skips the term, and the value returned is then 0 (finite, zero gradient).
  """
  p = _f32(p)
  n = (1.0 - _f32(pos_mask)) * _f32(audio_mask)  # [B, T]
  nb = n[:, None, None, None, None, :]
  count = n.sum() * (p.size // (n.shape[0] * n.shape[1]))  # sum of n broadcast to P.
  value = (jnp.square(p) * nb).sum() / jnp.maximum(count, WEIGHT_FLOOR)
  present = n.sum() > 0
  return jnp.where(present, value, 0.0), present


def mixup(p: jax.Array, image_mask) -> jax.Array:
  """Matched similarity outside the true image's region (quad mixup, docs/data.md#mixup;
  docs/method.md#regularisers).

  image_mask [B, H, W]: 1 on the true image's pixels, already average-pooled to the feature
  grid. neg = 1 - image_mask broadcast to P's shape;
  value = sum((P neg)^2) / max(sum(neg), 0.1) (the release squares the masked product).
  """
  p = _f32(p)
  neg = 1.0 - _f32(image_mask)  # [B, H, W]
  nb = neg[:, None, :, :, None, None]
  count = neg.sum() * (p.size // neg.size)
  return jnp.square(p * nb).sum() / jnp.maximum(count, WEIGHT_FLOOR)


def specialization(p: jax.Array) -> jax.Array:
  """Head specialisation: mean over head pairs i < j of mean(|P[:, i]| |P[:, j]|).

  Defined for K > 1 only (the release skips it for K == 1; this returns 0 then).
  """
  p = _f32(p)
  k = p.shape[1]
  if k < 2:
    return jnp.zeros((), jnp.float32)
  a = jnp.abs(p)
  gram = jnp.einsum('bi...,bj...->ij', a, a, precision=HIGHEST)  # [K, K]
  per_pair = gram / (p.size // k)  # mean(|P_i| |P_j|)
  upper = jnp.triu(jnp.ones((k, k), jnp.float32), 1)
  return (per_pair * upper).sum() / (k * (k - 1) // 2)


def disentangle(p: jax.Array, source) -> jax.Array:
  """Source disentanglement: the other source's heads should stay silent.

  source int [B] in {0 speech, 1 sound}; K even: heads [0, K/2) belong to speech, [K/2, K)
  to sound. mask[b, k] = 1 - onehot(source[b])[k // (K/2)];
  value = mean over (b, h, w, f, t) of (sum_k P[b, k] mask[b, k])^2 (the release squares the
  masked head *sum*).
  """
  p = _f32(p)
  k = p.shape[1]
  if k % 2:
    raise ValueError(f'loss.weights.disentangle needs an even model.num_heads (got {k})')
  onehot = jax.nn.one_hot(jnp.asarray(source, jnp.int32), 2, dtype=jnp.float32)  # [B, 2]
  mask = 1.0 - jnp.repeat(onehot, k // 2, axis=1)  # [B, K]
  masked = jnp.einsum('bkhwft,bk->bhwft', p, mask, precision=HIGHEST)
  return jnp.square(masked).mean()


def cal_balance(cal, cal_init: float) -> jax.Array:
  """Keeps the calibrator from shrinking: max(log(cal_init) - log(max(w, 1e-8)), 0)^2."""
  w = jnp.maximum(_f32(cal), CAL_FLOOR)
  return jnp.square(jnp.maximum(jnp.log(jnp.float32(cal_init)) - jnp.log(w), 0.0)).mean()


# ------------------------------------------------------------- sampled regularisers

def sample_silent_steps(audio_mask, rng, num_samples: int = NUM_SAMPLES):
  """num_samples distinct (b, t) uniformly among the silent steps (audio_mask false).

  Static shapes: iid uniform keys, non-silent ones pushed to -inf, top_k (the top of iid
  keys is a uniform subset without replacement). Returns (b_idx [n], t_idx [n], present)
  with present = (number of silent steps >= num_samples); when not present the indices are
  meaningless and the caller must drop the term (the release skips it).
  """
  mask = jnp.asarray(audio_mask).astype(bool)
  bsz, t = mask.shape
  silent = ~mask
  present = silent.sum() >= num_samples
  if num_samples > bsz * t:
    zeros = jnp.zeros((num_samples,), jnp.int32)
    return zeros, zeros, jnp.zeros((), bool)
  keys = jax.random.uniform(rng, (bsz * t,))
  keys = jnp.where(silent.reshape(-1), keys, -jnp.inf)
  _, idx = jax.lax.top_k(keys, num_samples)
  return (idx // t).astype(jnp.int32), (idx % t).astype(jnp.int32), present


def silence_value(audio_feats, image_feats, b_idx, t_idx, num_heads: int,
                  nonneg: bool = False) -> dict[str, jax.Array]:
  """Similarity of chosen (silent) audio steps with every image's dense map.

  a[n] = mean over F of audio_feats[b_idx[n], :, t_idx[n]], split into K heads [n, K, c];
  x[b, k, n, h, w] = sum_c I[b, h, w, k, c] a[n, k, c] (clamped at 0 with nonneg).
  Returns dict(l1=mean |x|, l2=mean x^2).
  """
  a = _f32(audio_feats)[b_idx, :, t_idx].mean(axis=1)  # [n, C]
  a = dense.split_heads(a, num_heads)
  v = dense.split_heads(_f32(image_feats), num_heads)  # [B, H, W, K, c]
  x = jnp.einsum('bhwkc,nkc->bknhw', v, a, precision=HIGHEST)
  if nonneg:
    x = jnp.maximum(x, 0.0)
  return dict(l1=jnp.abs(x).mean(), l2=jnp.square(x).mean())


def silence(audio_feats, audio_mask, image_feats, num_heads: int, nonneg: bool, rng,
            num_samples: int = NUM_SAMPLES):
  """Silent audio should match nothing (silence_l1 / silence_l2; docs/method.md#regularisers).

  `num_samples` random silent steps of the whole batch (sample_silent_steps), compared with
  every image (silence_value). Returns (dict(l1=..., l2=...), present); when fewer than
  num_samples silent steps exist both values are 0 (finite, zero gradient).
  """
  b_idx, t_idx, present = sample_silent_steps(audio_mask, rng, num_samples)
  vals = silence_value(audio_feats, image_feats, b_idx, t_idx, num_heads, nonneg)
  return {k: jnp.where(present, v, 0.0) for k, v in vals.items()}, present


def sample_pairs(rng, shape_audio, shape_image, num_samples: int = NUM_SAMPLES):
  """Independent uniform indices for nonneg_pressure, each [num_samples] int32.

  shape_audio = (B, F, T, ...), shape_image = (B, H, W, ...). Draws b (with replacement),
  f, t, h, w; audio vectors A[b, f, t] and image vectors I[b, h, w] share the b's.
  Returns dict(b, f, t, h, w).
  """
  bsz, f, t = shape_audio[:3]
  _, h, w = shape_image[:3]
  keys = jax.random.split(rng, 5)
  names_sizes = (('b', bsz), ('f', f), ('t', t), ('h', h), ('w', w))
  return {name: jax.random.randint(key, (num_samples,), 0, size, jnp.int32)
          for key, (name, size) in zip(keys, names_sizes)}


def nonneg_pressure_value(audio_feats, image_feats, idx, num_heads: int) -> jax.Array:
  """mean of min(x, 0)^2 over x[i, j, k] = <A[b_i, f_i, t_i]_k, I[b_j, h_j, w_j]_k>.

  All num_samples x num_samples per-head dot products, raw (never clamped).
  """
  a = dense.split_heads(_f32(audio_feats)[idx['b'], idx['f'], idx['t']], num_heads)
  v = dense.split_heads(_f32(image_feats)[idx['b'], idx['h'], idx['w']], num_heads)
  x = jnp.einsum('ikc,jkc->ijk', a, v, precision=HIGHEST)
  return jnp.square(jnp.minimum(x, 0.0)).mean()


def nonneg_pressure(audio_feats, image_feats, num_heads: int, rng,
                    num_samples: int = NUM_SAMPLES) -> jax.Array:
  """Pressure towards non-negative similarities (docs/method.md#regularisers).

  num_samples random audio vectors (b, f, t) and image vectors (b, h, w) with the same b's
  (sample_pairs); mean of min(x, 0)^2 over all their per-head dot products.
  """
  idx = sample_pairs(rng, audio_feats.shape, image_feats.shape, num_samples)
  return nonneg_pressure_value(audio_feats, image_feats, idx, num_heads)
