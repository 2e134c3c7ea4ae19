"""The dense audio-visual similarity volume and its aggregation into scores (SPEC §2).

Shapes (channels-last): audio feats [A, F, T, C], audio mask [A, T] (bool),
image feats [V, H, W, C]; K heads split C into K groups of C/K channels.

    S[a, v, k, h, w, f, t] = sum_c A[a, f, t, k, c] * I[v, h, w, k, c]     (fp32)

`scores` returns the [A, V] matrix; `matched_volume` the per-pair volume used by
evaluation heat maps. This module materialises the volume for the whole batch, which
is fine at the synthetic scale; the memory-bounded, mesh-sharded operator is issue 3.
"""

import jax
import jax.numpy as jnp

AGGREGATORS = ('misa', 'mima', 'sisa')
HEAD_AGGREGATIONS = ('max_elementwise', 'sum', 'max')


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[..., C] -> [..., K, C // K]."""
  c = x.shape[-1]
  if c % num_heads:
    raise ValueError(f'{c} channels cannot be split into {num_heads} heads')
  return x.reshape(*x.shape[:-1], num_heads, c // num_heads)


def volume(audio_feats, image_feats, num_heads: int, nonneg: bool = False):
  """All-pairs volume [A, V, K, H, W, F, T] in fp32."""
  a = split_heads(audio_feats, num_heads).astype(jnp.float32)
  v = split_heads(image_feats, num_heads).astype(jnp.float32)
  s = jnp.einsum('aftkc,vhwkc->avkhwft', a, v, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(s, 0.0) if nonneg else s


def matched_volume(audio_feats, image_feats, num_heads: int, nonneg: bool = False):
  """Volume of matched pairs only, [B, K, H, W, F, T]."""
  a = split_heads(audio_feats, num_heads).astype(jnp.float32)
  v = split_heads(image_feats, num_heads).astype(jnp.float32)
  s = jnp.einsum('bftkc,bhwkc->bkhwft', a, v, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(s, 0.0) if nonneg else s


def masked_mean(x, mask, axis):
  """sum(x * m) / max(sum(m), 1e-3) along `axis` (mask broadcast against x)."""
  m = mask.astype(x.dtype)
  return (x * m).sum(axis) / jnp.maximum(m.sum(axis), 1e-3)


def masked_max(x, mask, axis):
  return (x - (1.0 - mask.astype(x.dtype)) * 1e7).max(axis)


def _reduce(vol, audio_mask, agg: str):
  """vol: [A, V, ..., H, W, F, T] (any axes between V and H) -> [A, V, ...]."""
  if agg == 'misa':
    x = vol.max(axis=(-4, -3)).mean(axis=-2)  # [A, V, ..., T]
    return masked_mean(x, _time_mask(audio_mask, x.ndim), axis=-1)
  if agg == 'mima':
    x = vol.max(axis=(-4, -3)).mean(axis=-2)
    return masked_max(x, _time_mask(audio_mask, x.ndim), axis=-1)
  if agg == 'sisa':
    x = vol.mean(axis=(-4, -3)).mean(axis=-2)
    return masked_mean(x, _time_mask(audio_mask, x.ndim), axis=-1)
  raise ValueError(f'sim.agg={agg!r} is not one of {AGGREGATORS}')


def _time_mask(audio_mask, ndim):
  """[A, T] -> [A, 1, ..., 1, T] broadcastable against an ndim-array [A, V, ..., T]."""
  return audio_mask.reshape(audio_mask.shape[0], *([1] * (ndim - 2)), audio_mask.shape[-1])


def scores(audio_feats, audio_mask, image_feats, *, num_heads: int = 1, agg: str = 'misa',
           head_agg: str = 'max_elementwise', nonneg: bool = False):
  """[A, V] similarity scores of every audio with every image."""
  vol = volume(audio_feats, image_feats, num_heads, nonneg)  # [A, V, K, H, W, F, T]
  if head_agg == 'max_elementwise':
    return _reduce(vol.max(axis=2), audio_mask, agg)
  per_head = _reduce(vol, audio_mask, agg)  # [A, V, K]
  if head_agg == 'sum':
    return per_head.sum(-1)
  if head_agg == 'max':
    return per_head.max(-1)
  raise ValueError(f'sim.head_agg={head_agg!r} is not one of {HEAD_AGGREGATIONS}')


def blocked_scores(audio_feats, audio_mask, image_feats, *, block: int, **kwargs):
  """`scores` computed `block` audio rows at a time, for large N x N evaluation."""
  n = audio_feats.shape[0]
  pad = (-n) % block
  af = jnp.pad(audio_feats, ((0, pad),) + ((0, 0),) * 3)
  am = jnp.pad(audio_mask, ((0, pad), (0, 0)))
  af = af.reshape(-1, block, *af.shape[1:])
  am = am.reshape(-1, block, am.shape[-1])
  out = jax.lax.map(lambda x: scores(x[0], x[1], image_feats, **kwargs), (af, am))
  return out.reshape(-1, image_feats.shape[0])[:n]
