"""The dense similarity volume and every reduction of it into scores: the reference.

The method: docs/method.md#similarity-volume (aggregators, head aggregation).

This module is the *definition* of correct: straight einsums over the fully materialised
volume, reductions in the release's order. It is what the tests compare the scalable,
mesh-sharded operator (`denseav_jax.similarity.scalable`) against, and what small evaluations use.

Shapes (channels-last): audio feats [A, F, T, C], audio mask [A, T] (bool or 0/1),
image feats [V, H, W, C], CLS vectors [A, C] / [V, C]; K heads split C into K groups:

    S[a, v, k, h, w, f, t] = sum_c A[a, f, t, k, c] * I[v, h, w, k, c]     (fp32)
                             (+ sum_c Acls[a, k, c] * Icls[v, k, c]   with use_cls)
                             (clamped at 0 with nonneg)

Aggregators ("volume" ones reduce S; "pooled" ones compare one vector per example):
  misa   max over h, w; mean over f; masked mean over t          (DenseAV)
  mima   max over h, w; mean over f; masked max over t
  sisa   mean over h, w; mean over f; masked mean over t
  paired 1/2 misa + 1/2 (mean over f; masked max over t; mean over h, w)
  cavmae cosine of the mean-pooled audio (over f, t; unmasked) and image (over h, w) features
  imagebind  audio CLS . image CLS
  simpool    dot product of SimPool-pooled vectors (the pooling has parameters: the model's
             `simpool` method computes them; pass them as audio_cls / image_cls)
Head aggregation: 'max_elementwise' max over heads before the reductions; 'sum' / 'max'
reduce each head, then sum / max over heads. Pooled aggregators have one "head".
"""

import jax
import jax.numpy as jnp

from denseav_jax import errors

VOLUME_AGGREGATORS = ('misa', 'mima', 'sisa', 'paired')
POOLED_AGGREGATORS = ('cavmae', 'imagebind', 'simpool')
AGGREGATORS = VOLUME_AGGREGATORS + POOLED_AGGREGATORS
HEAD_AGGREGATIONS = ('max_elementwise', 'sum', 'max')
MASK_FILL = 1e7  # masked max: x - (1 - m) * MASK_FILL (release).
MEAN_FLOOR = 1e-3  # masked mean: sum(x m) / max(sum(m), MEAN_FLOOR) (release).
HIGHEST = jax.lax.Precision.HIGHEST


def check_options(agg: str, head_agg: str, num_heads: int, channels: int | None = None):
  """Raises errors.ConfigError (a ValueError) naming the config key for an unknown or
  inconsistent option."""
  if agg not in AGGREGATORS:
    raise errors.ConfigError(f'config.sim.agg={agg!r} is not one of {AGGREGATORS}')
  if head_agg not in HEAD_AGGREGATIONS:
    raise errors.ConfigError(f'config.sim.head_agg={head_agg!r} is not one of '
                             f'{HEAD_AGGREGATIONS}')
  if channels is not None and channels % num_heads:
    raise errors.ConfigError(f'{channels} channels cannot be split into {num_heads} heads '
                             '(model.code_dim must be divisible by model.num_heads)')


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[..., C] -> [..., K, C // K]."""
  c = x.shape[-1]
  if c % num_heads:
    raise ValueError(f'{c} channels cannot be split into {num_heads} heads '
                     '(model.code_dim must be divisible by model.num_heads)')
  return x.reshape(*x.shape[:-1], num_heads, c // num_heads)


def cls_sims(audio_cls, image_cls, num_heads: int) -> jax.Array:
  """Per-head CLS . CLS of every pair, [A, V, K]."""
  a = split_heads(audio_cls, num_heads).astype(jnp.float32)
  v = split_heads(image_cls, num_heads).astype(jnp.float32)
  return jnp.einsum('akc,vkc->avk', a, v, precision=HIGHEST)


def volume(audio_feats, image_feats, num_heads: int, nonneg: bool = False,
           audio_cls=None, image_cls=None):
  """All-pairs volume [A, V, K, H, W, F, T] in fp32 (CLS term added when CLS are given)."""
  a = split_heads(audio_feats, num_heads).astype(jnp.float32)
  v = split_heads(image_feats, num_heads).astype(jnp.float32)
  s = jnp.einsum('aftkc,vhwkc->avkhwft', a, v, precision=HIGHEST)
  if audio_cls is not None:
    s = s + cls_sims(audio_cls, image_cls, num_heads)[..., None, None, None, None]
  return jnp.maximum(s, 0.0) if nonneg else s


def matched_volume(audio_feats, image_feats, num_heads: int, nonneg: bool = False,
                   audio_mask=None, audio_cls=None, image_cls=None):
  """Volume of matched pairs only, [B, K, H, W, F, T].

  With `audio_mask` this is the regularisers' P (docs/method.md#regularisers): the mask
  multiplies the feature product, and the CLS term (when given) is added after the mask,
  then the clamp (release).
  """
  a = split_heads(audio_feats, num_heads).astype(jnp.float32)
  v = split_heads(image_feats, num_heads).astype(jnp.float32)
  s = jnp.einsum('bftkc,bhwkc->bkhwft', a, v, precision=HIGHEST)
  if audio_mask is not None:
    s = s * audio_mask.astype(jnp.float32)[:, None, None, None, None, :]
  if audio_cls is not None:
    c = jnp.einsum('bkc,bkc->bk', split_heads(audio_cls, num_heads).astype(jnp.float32),
                   split_heads(image_cls, num_heads).astype(jnp.float32), precision=HIGHEST)
    s = s + c[:, :, None, None, None, None]
  return jnp.maximum(s, 0.0) if nonneg else s


def masked_mean(x, mask, axis):
  """sum(x * m) / max(sum(m), 1e-3) along `axis` (mask broadcast against x)."""
  m = mask.astype(x.dtype)
  return (x * m).sum(axis) / jnp.maximum(m.sum(axis), MEAN_FLOOR)


def masked_max(x, mask, axis):
  return (x - (1.0 - mask.astype(x.dtype)) * MASK_FILL).max(axis)


def _time_mask(audio_mask, ndim):
  """[A, T] -> [A, 1, ..., 1, T] broadcastable against an ndim-array [A, V, ..., T]."""
  return audio_mask.reshape(audio_mask.shape[0], *([1] * (ndim - 2)), audio_mask.shape[-1])


def reduce_volume(vol, audio_mask, agg: str):
  """vol: [A, V, ..., H, W, F, T] (any axes between V and H) -> [A, V, ...]."""
  def time_mask(x):
    return _time_mask(audio_mask, x.ndim)
  if agg in ('misa', 'mima', 'paired'):
    x = vol.max(axis=(-4, -3)).mean(axis=-2)  # [A, V, ..., T]
    if agg == 'mima':
      return masked_max(x, time_mask(x), axis=-1)
    misa = masked_mean(x, time_mask(x), axis=-1)
    if agg == 'misa':
      return misa
    y = vol.mean(axis=-2)  # [A, V, ..., H, W, T]
    y = masked_max(y, _time_mask(audio_mask, y.ndim), axis=-1).mean(axis=(-2, -1))
    return 0.5 * misa + 0.5 * y
  if agg == 'sisa':
    x = vol.mean(axis=(-4, -3)).mean(axis=-2)
    return masked_mean(x, time_mask(x), axis=-1)
  raise ValueError(f'sim.agg={agg!r} is not one of {VOLUME_AGGREGATORS}')


def combine_heads(per_head: jax.Array, head_agg: str) -> jax.Array:
  """[..., K] per-head scores -> [...] ('max_elementwise' has already reduced K to 1)."""
  if head_agg in ('sum', 'max_elementwise'):
    return per_head.sum(-1)
  if head_agg == 'max':
    return per_head.max(-1)
  raise ValueError(f'sim.head_agg={head_agg!r} is not one of {HEAD_AGGREGATIONS}')


def _l2_normalize(x, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pooled_scores(audio_feats, image_feats, audio_cls, image_cls, agg: str):
  """[A, V] scores of the pooled (single-vector) aggregators."""
  if agg == 'cavmae':
    a = _l2_normalize(audio_feats.astype(jnp.float32).mean(axis=(1, 2)))
    v = _l2_normalize(image_feats.astype(jnp.float32).mean(axis=(1, 2)))
  elif agg in ('imagebind', 'simpool'):
    if audio_cls is None or image_cls is None:
      what = 'CLS vectors' if agg == 'imagebind' else 'SimPool-pooled vectors (model.simpool)'
      raise ValueError(f'sim.agg={agg!r} needs the {what} as audio_cls / image_cls')
    a, v = audio_cls.astype(jnp.float32), image_cls.astype(jnp.float32)
  else:
    raise ValueError(f'sim.agg={agg!r} is not one of {POOLED_AGGREGATORS}')
  return jnp.einsum('ac,vc->av', a, v, precision=HIGHEST)


def scores(audio_feats, audio_mask, image_feats, *, num_heads: int = 1, agg: str = 'misa',
           head_agg: str = 'max_elementwise', nonneg: bool = False, use_cls: bool = False,
           audio_cls=None, image_cls=None, mask_silence: bool = True,
           per_head: bool = False):
  """[A, V] similarity scores of every audio with every image (dense reference).

  per_head=True returns [A, V, K'] before the head combination (K' = 1 for
  'max_elementwise' and for the pooled aggregators).
  """
  check_options(agg, head_agg, num_heads, audio_feats.shape[-1])
  if agg in POOLED_AGGREGATORS:
    s = pooled_scores(audio_feats, image_feats, audio_cls, image_cls, agg)
    return s[..., None] if per_head else s
  if not mask_silence:
    audio_mask = jnp.ones_like(audio_mask)
  if use_cls and (audio_cls is None or image_cls is None):
    raise ValueError('sim.use_cls=True needs audio_cls and image_cls')
  vol = volume(audio_feats, image_feats, num_heads, nonneg,
               audio_cls if use_cls else None, image_cls if use_cls else None)
  if head_agg == 'max_elementwise':
    vol = vol.max(axis=2, keepdims=True)
  out = reduce_volume(vol, audio_mask, agg)  # [A, V, K']
  return out if per_head else combine_heads(out, head_agg)


def blocked_scores(audio_feats, audio_mask, image_feats, *, block: int, **kwargs):
  """`scores` computed `block` audio rows at a time (dense within a block)."""
  n = audio_feats.shape[0]
  pad = (-n) % block
  af = jnp.pad(audio_feats, ((0, pad),) + ((0, 0),) * 3)
  am = jnp.pad(audio_mask, ((0, pad), (0, 0)))
  af = af.reshape(-1, block, *af.shape[1:])
  am = am.reshape(-1, block, am.shape[-1])
  out = jax.lax.map(lambda x: scores(x[0], x[1], image_feats, **kwargs), (af, am))
  return out.reshape(-1, image_feats.shape[0])[:n]
