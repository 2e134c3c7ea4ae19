"""Transformer building blocks shared by the image tower, audio tower and aligners.

Layouts follow the PyTorch models we import later (DINO/timm: fused `qkv`; HuBERT:
separate q/k/v), but activations are channels-last: tokens are [B, N, D].
"""

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's nn.Linear / nn.Conv default init is not needed: towers are either trained
# from scratch here or loaded from converted checkpoints.
dense_init = nn.initializers.truncated_normal(0.02)


def gelu(x):
  return nn.gelu(x, approximate=False)  # DINO and HuBERT use the exact (erf) GELU.


class Mlp(nn.Module):
  hidden: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=dense_init, name='fc1')(x)
    x = gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(d, kernel_init=dense_init, name='fc2')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class FusedAttention(nn.Module):
  """Multi-head self-attention with one fused `qkv` projection (DINO/timm layout)."""
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    b, n, d = x.shape
    hd = d // self.num_heads
    qkv = nn.Dense(3 * d, kernel_init=dense_init, name='qkv')(x)  # [B, N, 3D]
    qkv = qkv.reshape(b, n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(hd).astype(x.dtype)
    if mask is not None:  # mask: [B, N] True on keys that may be attended to.
      logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    attn = nn.softmax(logits, axis=-1)
    attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, n, d)
    return nn.Dense(d, kernel_init=dense_init, name='proj')(out)


class DepthwiseMixer(nn.Module):
  """Mixes each patch token only with its 3x3 neighbours (depthwise conv).

  Used in place of attention by small image towers trained from scratch: features stay
  local, so the max over image space in the similarity volume stays a *where*.
  """
  grid: tuple[int, int]
  kernel: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del train, mask
    b, n, d = x.shape
    h, w = self.grid
    y = x.reshape(b, h, w, d)
    y = nn.Conv(d, (self.kernel, self.kernel), padding='SAME', feature_group_count=d,
                kernel_init=dense_init, name='dwconv')(y)
    y = y.reshape(b, n, d)
    return nn.Dense(d, kernel_init=dense_init, name='proj')(y)


class Block(nn.Module):
  """Pre-norm transformer block: x + mix(LN(x)); x + MLP(LN(x))."""
  num_heads: int
  mlp_hidden: int
  ln_eps: float = 1e-6
  dropout: float = 0.0
  mixer: str = 'attention'  # 'attention' | 'dwconv' (needs `grid`).
  grid: tuple[int, int] | None = None  # Patch grid (H, W) for the 'dwconv' mixer.

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    if self.mixer == 'attention':
      mixer = FusedAttention(self.num_heads, self.dropout, name='attn')
    elif self.mixer == 'dwconv':
      mixer = DepthwiseMixer(self.grid, name='attn')
    else:
      raise ValueError(f"model mixer must be 'attention' or 'dwconv', got {self.mixer!r}")
    y = nn.LayerNorm(epsilon=self.ln_eps, name='norm1')(x)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(mixer(y, train=train, mask=mask))
    y = nn.LayerNorm(epsilon=self.ln_eps, name='norm2')(x)
    return x + Mlp(self.mlp_hidden, self.dropout, name='mlp')(y, train=train)
