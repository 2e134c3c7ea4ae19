"""Transformer building blocks shared by the image tower, audio tower and aligners.

Layouts follow the PyTorch models we import later (DINO/timm: fused `qkv`; HuBERT:
separate q/k/v), but activations are channels-last: tokens are [B, N, D].
"""

from typing import Callable

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


class PatchConv(nn.Module):
  """A conv whose stride equals its kernel (non-overlapping patches), as reshape + matmul.

  Parameters have nn.Conv's layout (kernel [*window, in, out], bias [out]); XLA's CPU
  convolutions are many times slower than the equivalent matmul.
  x: [B, *spatial, in] -> [B, *spatial // window, out] (trailing remainders dropped).
  """
  features: int
  window: tuple[int, ...]
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    nd = len(self.window)
    cin = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (*self.window, cin, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    b, spatial = x.shape[0], x.shape[1:-1]
    out_sp = [s // w for s, w in zip(spatial, self.window)]
    x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out_sp, self.window))]
    shape = [b]
    for o, w in zip(out_sp, self.window):
      shape += [o, w]
    x = x.reshape(*shape, cin)
    # Move the window axes next to the channels: [B, o1, o2.., w1, w2.., C].
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    x = x.transpose(perm).reshape(b, *out_sp, -1)
    y = x @ kernel.reshape(-1, self.features).astype(x.dtype)
    return y + bias.astype(y.dtype)


def shifted_conv1d(x, kernel, groups: int = 1, padding: tuple[int, int] = (0, 0)):
  """Stride-1 1-D (grouped) conv as a sum of shifted matmuls, one per kernel tap.

  x: [B, T, Cin]; kernel: [K, Cin // groups, Cout] (lax 'WIO' layout). For the small
  kernels of the tiny configs this is several times faster than lax.conv on CPU.
  """
  k, cg_in, cout = kernel.shape
  b, _, cin = x.shape
  x = jnp.pad(x, ((0, 0), padding, (0, 0)))
  t_out = x.shape[1] - k + 1
  cg_out = cout // groups
  w = kernel.reshape(k, cg_in, groups, cg_out)
  xg = x.reshape(b, x.shape[1], groups, cg_in)
  out = 0.0
  for i in range(k):
    out = out + jnp.einsum('btgc,cgd->btgd', xg[:, i:i + t_out], w[i].astype(x.dtype))
  return out.reshape(b, t_out, cout)


class DepthwiseMixer(nn.Module):
  """Mixes each patch token only with its 3x3 neighbours (depthwise conv).

  Used in place of attention by small image towers trained from scratch: features stay
  local, so the max over image space in the similarity volume stays a *where*. Computed
  as a sum of shifted, per-channel-scaled copies (exactly a 'SAME' depthwise conv).
  """
  grid: tuple[int, int]
  kernel: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del train, mask
    b, n, d = x.shape
    h, w = self.grid
    k = self.kernel
    weight = self.param('dwconv_kernel', dense_init, (k, k, 1, d))
    bias = self.param('dwconv_bias', nn.initializers.zeros, (d,))
    r = k // 2
    y = jnp.pad(x.reshape(b, h, w, d), ((0, 0), (r, k - 1 - r), (r, k - 1 - r), (0, 0)))
    out = 0.0
    for i in range(k):
      for j in range(k):
        out = out + y[:, i:i + h, j:j + w, :] * weight[i, j, 0].astype(x.dtype)
    out = (out + bias.astype(x.dtype)).reshape(b, n, d)
    return nn.Dense(d, kernel_init=dense_init, name='proj')(out)


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
