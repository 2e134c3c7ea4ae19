"""Image tower: a DINO-layout ViT returning a dense patch map and a CLS vector.

With `mixer='attention'` this is DINO's ViT (patch embed, CLS + learned positional
embedding, pre-norm blocks, final LayerNorm); `VIT_VARIANTS` lists the DINO family
(S/8, S/16, B/8, B/16). With `mixer='dwconv'` each block mixes a patch only with its 3x3
neighbours; there is then no CLS token in the sequence and the CLS output is the mean of
the final patch tokens (small towers trained from scratch).

`token_type='key'` returns the last block's attention keys instead of the output tokens
(DINO's "key" features); the CLS output is then the CLS token's key.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.models import layers
from denseav_jax.parallel.partitioning import constrain

# DINO ViTs (patch size, width, depth, heads); all have MLP ratio 4 and qkv bias.
VIT_VARIANTS = {
    'vit_small_8': dict(patch_size=8, width=384, depth=12, num_heads=6),
    'vit_small_16': dict(patch_size=16, width=384, depth=12, num_heads=6),
    'vit_base_8': dict(patch_size=8, width=768, depth=12, num_heads=12),
    'vit_base_16': dict(patch_size=16, width=768, depth=12, num_heads=12),
}


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution kernel with PyTorch's a = -0.75, at distances |t|."""
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
  """[n_out, n_in] matrix of torch's `interpolate(mode='bicubic', align_corners=False,
  scale_factor=scale)` along one axis: source x = (i + 0.5) / scale - 0.5, four taps with
  indices clamped to the border."""
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    x = (i + 0.5) / scale - 0.5
    x0 = int(np.floor(x))
    t = x - x0
    for j, off in enumerate((-1, 0, 1, 2)):
      m[i, min(max(x0 + off, 0), n_in - 1)] += _cubic(np.array(t - off))
  return m.astype(np.float32)


def resize_pos_embed(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Resizes a [1, s*s, D] patch position table to `grid` exactly as DINO does
  (`interpolate_pos_encoding`): bicubic (a=-0.75) with scale factor (grid + 0.1) / s."""
  n0 = pos.shape[1]
  s0 = int(round(n0 ** 0.5))
  if s0 * s0 != n0:
    raise ValueError(f'positional embedding with {n0} patches is not square')
  h, w = grid
  if (s0, s0) == (h, w):
    return pos
  mh = bicubic_matrix(s0, h, (h + 0.1) / s0)
  mw = bicubic_matrix(s0, w, (w + 0.1) / s0)
  table = pos.reshape(s0, s0, -1).astype(jnp.float32)
  out = jnp.einsum('hi,ijd,wj->hwd', mh, table, mw, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(1, h * w, -1).astype(pos.dtype)


class ImageTower(nn.Module):
  patch_size: int = 8
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: int = 4
  mixer: str = 'attention'
  ln_eps: float = 1e-6
  dropout: float = 0.0
  pos_grid: int = 28  # Grid of the stored positional table (224 / 8 for DINO S/8).
  token_type: str = 'token'  # 'token' (output tokens) | 'key' (last block's keys).
  lora: layers.LoraSpec | None = None
  remat: str = 'none'  # Per-block rematerialisation: 'none' | 'full' | 'dots'.
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: [B, S, S, 3] normalised float. Returns (dense [B, h, w, D], cls [B, D])."""
    if self.token_type not in ('token', 'key'):
      raise ValueError(f"model.image.token_type must be 'token' or 'key', got {self.token_type!r}")
    p = self.patch_size
    b, hh, ww, _ = images.shape
    if hh % p or ww % p:
      raise ValueError(f'image size {hh}x{ww} is not a multiple of patch_size={p}')
    x = layers.PatchConv(self.width, (p, p), axes=(None, 'embed'), dtype=self.dtype,
                         name='patch_embed')(images)
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, self.width)
    cls = self.param('cls_token', layers.with_axes(layers.dense_init, (None, None, 'embed')),
                     (1, 1, self.width))
    pos = self.param('pos_embed', layers.with_axes(layers.dense_init, (None, None, 'embed')),
                     (1, 1 + self.pos_grid ** 2, self.width))
    patch_pos = resize_pos_embed(pos[:, 1:], (gh, gw))
    x = x + patch_pos.astype(x.dtype)
    use_cls_token = self.mixer == 'attention'
    if use_cls_token:
      cls_tok = jnp.broadcast_to(cls + pos[:, :1], (b, 1, self.width)).astype(x.dtype)
      x = jnp.concatenate([cls_tok, x], axis=1)
    x = constrain(nn.Dropout(self.dropout, deterministic=not train)(x),
                  ('batch', 'length', 'embed'))
    block_cls = layers.maybe_remat(layers.Block, self.remat)
    keys = None
    for i in range(self.depth):
      x, keys = block_cls(self.num_heads, self.width * self.mlp_ratio, self.ln_eps,
                          self.dropout, mixer=self.mixer, grid=(gh, gw), dtype=self.dtype,
                          lora=self.lora, name=f'blocks_{i}')(x, train)
    # The final norm always exists (a converted DINO checkpoint has it); with 'key'
    # features its output is unused and XLA drops it.
    normed = layers.LayerNorm(self.ln_eps, self.dtype, name='norm')(x)
    if self.token_type == 'key':
      if keys is None:
        raise ValueError("model.image.token_type='key' needs mixer='attention'")
      x = keys
    else:
      x = normed
    if use_cls_token:
      cls_out, patches = x[:, 0], x[:, 1:]
    else:
      patches = x
      cls_out = x.mean(axis=1)
    return patches.reshape(b, gh, gw, self.width), cls_out
