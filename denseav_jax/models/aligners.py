"""Aligners: map each tower's dense features (and CLS) into the shared code space.

Layouts are channels-last: image maps [B, H, W, D], audio maps [B, F, T, D].
Submodule names follow the release's state-dict keys so checkpoints convert 1:1.
"""

import flax.linen as nn
import jax.numpy as jnp

from denseav_jax.models import layers


class ImageLinear(nn.Module):
  """`image_linear`: LayerNorm over channels, then a 1x1 conv; CLS: separate Linear."""
  code_dim: int
  ln_eps: float = 1e-4

  @nn.compact
  def __call__(self, feats, cls, train: bool = False):
    del train
    x = nn.LayerNorm(epsilon=self.ln_eps, name='norm')(feats)
    x = nn.Dense(self.code_dim, name='layer')(x)  # A 1x1 conv is a per-pixel Dense.
    return x, nn.Dense(self.code_dim, name='cls_layer')(cls)  # Un-normalised CLS.


class AudioSA33Pool2(nn.Module):
  """`audio_sa_3_3_pool_2`: mean over F, LayerNorm, two (1,3)/3 convs, one SA block."""
  code_dim: int
  num_heads: int = 6
  ln_eps: float = 1e-4
  dropout: float = 0.0

  @nn.compact
  def __call__(self, feats, cls, train: bool = False):
    """feats: [B, F, T, D], cls: [B, D] -> ([B, 1, T // 9, C], [B, C])."""
    x = feats.mean(axis=1, keepdims=True)  # mod_list.0: mean over frequency.
    norm = nn.LayerNorm(epsilon=self.ln_eps, name='norm')  # mod_list.1 (also on the CLS).
    x, cls = norm(x), norm(cls)
    x = layers.PatchConv(self.code_dim, (1, 3), name='conv1')(x)  # (1,3) conv, stride (1,3).
    cls = nn.Dense(self.code_dim, name='cls_layer')(cls)
    x = layers.PatchConv(self.code_dim, (1, 3), name='conv2')(x)
    b, f, t, c = x.shape
    tokens = jnp.concatenate([cls[:, None, :], x.reshape(b, f * t, c)], axis=1)
    tokens = layers.Block(self.num_heads, 4 * c, self.ln_eps, self.dropout,
                          name='block')(tokens, train=train)
    return tokens[:, 1:].reshape(b, f, t, c), tokens[:, 0]


IMAGE_ALIGNERS = {'image_linear': ImageLinear}
AUDIO_ALIGNERS = {'audio_sa_3_3_pool_2': AudioSA33Pool2}
