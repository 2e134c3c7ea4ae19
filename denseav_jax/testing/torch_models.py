"""PyTorch reference towers: a DINO-layout ViT written here, and Hugging Face's HubertModel.

Used by the parity tests (random weights, converted with `denseav_jax.conversion`) and by
`python -m denseav_jax.bench.model` (same weights, threads and precision as the JAX
towers). The ViT follows DINO's `vision_transformer.py` layout and maths: patch conv, CLS
token, learned positional table resized bicubically with DINO's +0.1, pre-norm blocks
with one fused `qkv` Linear, exact GELU, final LayerNorm. Needs torch (and transformers
for HuBERT): `pip install -e .[convert]`; without them, importing this module (or calling
`hubert`) raises errors.MissingExtra saying so.
"""

import math

from denseav_jax import errors

torch = errors.require('torch', 'convert', 'denseav_jax.testing.torch_models (the PyTorch '
                       'reference towers)')
from torch import nn  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position


def _transformers():
  return errors.require('transformers', 'convert',
                        'the PyTorch HuBERT reference (transformers.HubertModel)')


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), k


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, eps: float = 1e-6):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, dim * mlp_ratio)

  def forward(self, x):
    y, k = self.attn(self.norm1(x))
    x = x + y
    return x + self.mlp(self.norm2(x)), k


class PatchEmbed(nn.Module):
  def __init__(self, patch_size: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
  """DINO ViT: forward(images [B, 3, H, W]) -> (dense [B, D, h, w], cls [B, D]);
  token_type='key' returns the last block's keys (CLS: the CLS token's key)."""

  def __init__(self, patch_size=8, width=384, depth=12, num_heads=6, mlp_ratio=4,
               eps=1e-4, img_size=224, token_type='token'):
    super().__init__()
    self.patch_size = patch_size
    self.token_type = token_type
    self.patch_embed = PatchEmbed(patch_size, width)
    n = (img_size // patch_size) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, width))
    self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, eps) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=eps)

  def interpolate_pos_encoding(self, npatch: int, h: int, w: int):
    n = self.pos_embed.shape[1] - 1
    if npatch == n and h == w:
      return self.pos_embed
    cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
    dim = self.pos_embed.shape[-1]
    h0, w0 = h // self.patch_size + 0.1, w // self.patch_size + 0.1
    s = int(math.sqrt(n))
    patch_pos = F.interpolate(patch_pos.reshape(1, s, s, dim).permute(0, 3, 1, 2),
                              scale_factor=(h0 / s, w0 / s), mode='bicubic')
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)

  def forward(self, x):
    b, _, h, w = x.shape
    t = self.patch_embed(x)
    t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
    t = t + self.interpolate_pos_encoding(t.shape[1] - 1, h, w)
    k = None
    for blk in self.blocks:
      t, k = blk(t)
    gh, gw = h // self.patch_size, w // self.patch_size
    if self.token_type == 'key':
      t = k.permute(0, 2, 3, 1).flatten(-2)  # [B, N, hd * heads], DINO's key-feature order
    else:
      t = self.norm(t)
    dense = t[:, 1:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
    return dense, t[:, 0]


def hubert_config(variant: str = 'large', num_layers: int | None = None, eps: float = 1e-4,
                  **overrides):
  """A transformers HubertConfig with the published Base/Large shapes (no download)."""
  HubertConfig = _transformers().HubertConfig  # pylint: disable=invalid-name
  if variant == 'large':
    kw = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, feat_extract_norm='layer', conv_bias=True,
              do_stable_layer_norm=True)
  elif variant == 'base':
    kw = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, feat_extract_norm='group', conv_bias=False,
              do_stable_layer_norm=False)
  else:
    raise ValueError(f"hubert variant must be 'large' or 'base', got {variant!r}")
  if num_layers is not None:
    kw['num_hidden_layers'] = num_layers
  kw.update(layer_norm_eps=eps, hidden_dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
            mask_time_prob=0.0, feat_proj_layer_norm=True)
  kw.update(overrides)
  return HubertConfig(**kw)


def hubert(variant: str = 'large', num_layers: int | None = None, eps: float = 1e-4, **kw):
  """HubertModel with random weights (eval mode)."""
  return _transformers().HubertModel(hubert_config(variant, num_layers, eps, **kw)).eval()
