"""Aligners: map each tower's dense features (and CLS) into the shared code space.

Every aligner of the release (docs/method.md#aligners). Layouts are channels-last: image maps
[B, H, W, D], audio maps [B, F, T, D]; CLS vectors [B, D]. Stage modules and their
submodule names mirror the release's state-dict keys (`mod_list.N` -> `mod_list_N`,
`norm.norm`, `layer`, `cls_layer`, `block`), so checkpoints convert 1:1.

  image_linear          ChannelNorm, 1x1 conv; CLS: Linear of the *un-normalised* CLS.
  image_linear_no_norm  1x1 conv; CLS: Linear.
  image_idlinear        1x1 conv initialised to the identity; CLS unchanged.
  image_id              identity.        image_norm   ChannelNorm of map and CLS.
  audio_linear          image_linear, then mean over frequency.
  audio_sa              audio_linear, then a self-attention block over [CLS; time].
  audio_sa_sa           mean over frequency, linear, two self-attention blocks.
  audio_3_3_pool        linear, mean over F, 2 x (ChannelNorm, (1,3)/3 conv; CLS normed).
  audio_sa_3_3_pool     audio_3_3_pool, then a self-attention block.
  audio_sa_3_3_pool_2   (DenseAV) mean over F, ChannelNorm (map and CLS), (1,3)/3 conv
                        D->C (CLS: Linear), (1,3)/3 conv C->C, self-attention block.
"""

import flax.linen as nn
import jax.numpy as jnp

from denseav_jax.models import layers


class ChannelNorm(nn.Module):
  """LayerNorm over channels of the map and of the CLS (release ChannelNorm)."""
  eps: float = 1e-4
  dtype: layers.Dtype = jnp.float32
  axis_name: str = 'embed'

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    norm = layers.LayerNorm(self.eps, self.dtype, self.axis_name, name='norm')
    return norm(x), norm(cls)


class LinearAligner(nn.Module):
  """[ChannelNorm], 1x1 conv over the map; the CLS takes a Linear of the raw CLS."""
  code_dim: int
  use_norm: bool = True
  eps: float = 1e-4
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    raw_cls = cls
    if self.use_norm:
      x, _ = ChannelNorm(self.eps, self.dtype, name='norm')(x, cls)
    y = layers.Linear(self.code_dim, ('embed', 'code'), dtype=self.dtype, name='layer')(x)
    return y, layers.Linear(self.code_dim, ('embed', 'code'), dtype=self.dtype,
                            name='cls_layer')(raw_cls)


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


class IdLinearAligner(nn.Module):
  """A 1x1 conv initialised to the identity; the CLS passes unchanged."""
  code_dim: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    if x.shape[-1] != self.code_dim:
      raise ValueError(f'image_idlinear needs the tower width ({x.shape[-1]}) to equal '
                       f'model.code_dim ({self.code_dim})')
    return layers.Linear(self.code_dim, ('embed', 'code'), dtype=self.dtype,
                         kernel_init=_identity_init, name='layer')(x), cls


class FrequencyAvg(nn.Module):
  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    return x.mean(axis=1, keepdims=True), cls


class LearnedTimePool(nn.Module):
  """ChannelNorm (map and CLS), then a (1, width) conv with stride (1, width)."""
  dim: int
  width: int = 3
  eps: float = 1e-4
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    x, cls = ChannelNorm(self.eps, self.dtype, 'code', name='norm')(x, cls)
    return layers.PatchConv(self.dim, (1, self.width), axes=('code', 'code'), dtype=self.dtype,
                            name='layer')(x), cls


class LearnedTimePool2(nn.Module):
  """A (1, width) conv with stride (1, width); CLS through a Linear or unchanged."""
  dim: int
  width: int = 3
  use_cls_layer: bool = True
  in_axis: str = 'embed'
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    y = layers.PatchConv(self.dim, (1, self.width), axes=(self.in_axis, 'code'),
                         dtype=self.dtype, name='layer')(x)
    if self.use_cls_layer:
      cls = layers.Linear(self.dim, (self.in_axis, 'code'), dtype=self.dtype,
                          name='cls_layer')(cls)
    return y, cls


class SelfAttentionAligner(nn.Module):
  """One DINO transformer block (6 heads, MLP 4, LayerNorm eps 1e-4) over [CLS; tokens].

  Channels are zero-padded at the front to a multiple of the heads (as the release) and
  the padding is cut off again afterwards.
  """
  dim: int
  num_heads: int = 6
  eps: float = 1e-4
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    pad = (-self.dim) % self.num_heads
    b, f, t, c = x.shape
    tokens = x.reshape(b, f * t, c)
    tokens = jnp.concatenate([cls[:, None, :].astype(tokens.dtype), tokens], axis=1)
    if pad:
      tokens = jnp.pad(tokens, ((0, 0), (0, 0), (pad, 0)))
    width = c + pad
    tokens, _ = layers.Block(self.num_heads, 4 * width, self.eps, self.dropout,
                             dtype=self.dtype, name='block')(tokens, train)
    tokens = tokens[..., pad:]
    return tokens[:, 1:].reshape(b, f, t, c), tokens[:, 0]


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    return x, cls


class Sequential(nn.Module):
  """Stages applied in order to (map, cls); stage i is named `mod_list_i` (release keys)."""
  stages: tuple

  @nn.compact
  def __call__(self, x, cls, train: bool = False):
    for i, (stage_cls, kwargs) in enumerate(self.stages):
      x, cls = stage_cls(**dict(kwargs), name=f'mod_list_{i}')(x, cls, train)
    return x, cls


def build(kind: str, code_dim: int, *, heads: int = 6, eps: float = 1e-4, dtype=jnp.float32,
          name: str) -> nn.Module:
  """The aligner module called `kind` (release `get_aligner`)."""
  lin = (LinearAligner, dict(code_dim=code_dim, eps=eps, dtype=dtype))
  favg = (FrequencyAvg, {})
  sa = (SelfAttentionAligner, dict(dim=code_dim, num_heads=heads, eps=eps, dtype=dtype))
  pool = (LearnedTimePool, dict(dim=code_dim, width=3, eps=eps, dtype=dtype))
  seqs = {
      'audio_linear': (lin, favg),
      'audio_sa': (lin, favg, sa),
      'audio_sa_sa': (favg, lin, sa, sa),
      'audio_3_3_pool': (lin, favg, pool, pool),
      'audio_sa_3_3_pool': (lin, favg, pool, pool, sa),
      'audio_sa_3_3_pool_2': (
          favg, (ChannelNorm, dict(eps=eps, dtype=dtype)),
          (LearnedTimePool2, dict(dim=code_dim, width=3, use_cls_layer=True, dtype=dtype)),
          (LearnedTimePool2, dict(dim=code_dim, width=3, use_cls_layer=False, in_axis='code',
                                  dtype=dtype)),
          sa),
  }
  if kind in seqs:
    return Sequential(seqs[kind], name=name)
  if kind == 'image_linear':
    return LinearAligner(code_dim, True, eps, dtype, name=name)
  if kind == 'image_linear_no_norm':
    return LinearAligner(code_dim, False, eps, dtype, name=name)
  if kind == 'image_idlinear':
    return IdLinearAligner(code_dim, dtype, name=name)
  if kind == 'image_id':
    return Identity(name=name)
  if kind == 'image_norm':
    return ChannelNorm(eps, dtype, name=name)
  raise ValueError(f'aligner {kind!r} is not one of {sorted(ALIGNERS)}')


IMAGE_ALIGNERS = ('image_linear', 'image_linear_no_norm', 'image_idlinear', 'image_id',
                  'image_norm')
AUDIO_ALIGNERS = ('audio_linear', 'audio_sa', 'audio_sa_sa', 'audio_3_3_pool',
                  'audio_sa_3_3_pool', 'audio_sa_3_3_pool_2')
ALIGNERS = IMAGE_ALIGNERS + AUDIO_ALIGNERS


def output_dim(kind: str, code_dim: int, width: int) -> int:
  """Channels an aligner outputs for a tower of `width` channels."""
  return width if kind in ('image_id', 'image_norm') else code_dim
