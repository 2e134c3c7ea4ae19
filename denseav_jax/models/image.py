"""Image tower: a DINO-layout ViT returning a dense patch map and a CLS vector.

With `mixer='attention'` this is DINO's ViT (patch embed, CLS + learned positional
embedding, pre-norm blocks, final LayerNorm). With `mixer='dwconv'` each block mixes a
patch only with its 3x3 neighbours; there is then no CLS token in the sequence and the
CLS output is the mean of the final patch tokens.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from denseav_jax.models import layers


def resize_pos_embed(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Bicubically resizes a [1, h0*w0, D] patch position table to `grid` (DINO-style)."""
  n0 = pos.shape[1]
  s0 = int(round(n0 ** 0.5))
  if s0 * s0 != n0:
    raise ValueError(f'positional embedding with {n0} patches is not square')
  if (s0, s0) == tuple(grid):
    return pos
  table = pos.reshape(1, s0, s0, -1)
  # DINO adds 0.1 to the target grid before computing the scale factor, which shifts
  # the sampling positions slightly; we keep that scale. (Torch's bicubic kernel uses
  # a=-0.75, JAX's 'cubic' a=-0.5: exact parity with resized DINO tables is issue 4.)
  h, w = grid
  scale = jnp.array([(h + 0.1) / s0, (w + 0.1) / s0])
  out = jax.image.scale_and_translate(
      table, (1, h, w, table.shape[-1]), (1, 2), scale, jnp.zeros(2), 'cubic',
      antialias=False)
  return out.reshape(1, h * w, -1)


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

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: [B, S, S, 3] normalised float. Returns (dense [B, h, w, D], cls [B, D])."""
    p = self.patch_size
    b, hh, ww, _ = images.shape
    if hh % p or ww % p:
      raise ValueError(f'image size {hh}x{ww} is not a multiple of patch_size={p}')
    x = layers.PatchConv(self.width, (p, p), name='patch_embed')(images)
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, self.width)
    cls = self.param('cls_token', layers.dense_init, (1, 1, self.width))
    pos = self.param('pos_embed', layers.dense_init, (1, 1 + self.pos_grid ** 2, self.width))
    patch_pos = resize_pos_embed(pos[:, 1:], (gh, gw))
    x = x + patch_pos.astype(x.dtype)
    use_cls_token = self.mixer == 'attention'
    if use_cls_token:
      cls_tok = jnp.broadcast_to(cls + pos[:, :1], (b, 1, self.width)).astype(x.dtype)
      x = jnp.concatenate([cls_tok, x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = layers.Block(self.num_heads, self.width * self.mlp_ratio, self.ln_eps,
                       self.dropout, mixer=self.mixer, grid=(gh, gw),
                       name=f'blocks_{i}')(x, train=train)
    x = nn.LayerNorm(epsilon=self.ln_eps, name='norm')(x)
    if use_cls_token:
      cls_out, patches = x[:, 0], x[:, 1:]
    else:
      patches = x
      cls_out = x.mean(axis=1)
    return patches.reshape(b, gh, gw, self.width), cls_out
