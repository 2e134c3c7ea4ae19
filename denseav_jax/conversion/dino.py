"""A DINO / timm-layout ViT state dict -> params of models.image.ImageTower.

Accepts the fused `qkv` layout, 'module.' / 'backbone.' prefixes (DDP, DINO training
checkpoints) and peft LoRA on any Linear. The classifier or DINO projection head (`head.*`)
is not part of the backbone: it is dropped and reported, never converted. The tower's shape
fields come from the weights: patch size (patch_embed.proj.weight), width, depth, heads =
width // 64 (the DINO / timm convention: 64-channel heads), MLP ratio, pos_grid (pos_embed).
"""

from typing import Any, Mapping

from denseav_jax import errors
from denseav_jax.conversion import mapping

HEAD_WIDTH = 64  # DINO / timm ViTs use 64-channel attention heads.


def map_keys(r: mapping.Reader, p: str) -> dict:
  """ImageTower params from the ViT keys under prefix `p` of reader `r` (misses recorded)."""
  tree: dict = {}
  put = mapping.put
  put(tree, 'patch_embed/kernel', r.get(f'{p}patch_embed.proj.weight', mapping.conv2d_t,
                                        dst='patch_embed/kernel'))
  put(tree, 'patch_embed/bias', r.get(f'{p}patch_embed.proj.bias', dst='patch_embed/bias'))
  put(tree, 'cls_token', r.get(f'{p}cls_token', dst='cls_token'))
  put(tree, 'pos_embed', r.get(f'{p}pos_embed', dst='pos_embed'))
  for i in r.indices(f'{p}blocks'):
    s, d = f'{p}blocks.{i}', f'blocks_{i}'
    mapping.norm(r, f'{s}.norm1', f'{d}/norm1', tree)
    mapping.norm(r, f'{s}.norm2', f'{d}/norm2', tree)
    mapping.linear(r, f'{s}.attn.qkv', f'{d}/attn/qkv', tree)
    mapping.linear(r, f'{s}.attn.proj', f'{d}/attn/proj', tree)
    mapping.linear(r, f'{s}.mlp.fc1', f'{d}/mlp/fc1', tree)
    mapping.linear(r, f'{s}.mlp.fc2', f'{d}/mlp/fc2', tree)
  mapping.norm(r, f'{p}norm', 'norm', tree)
  return tree


def clean(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Strips 'module.' / 'backbone.' and drops 'head.*'. Returns (state dict, dropped keys)."""
  out, dropped = {}, []
  for k, v in sd.items():
    k2 = k
    for pre in ('module.', 'backbone.'):
      if k2.startswith(pre):
        k2 = k2[len(pre):]
    if k2.startswith('head.') or k2 == 'head':
      dropped.append(k)
      continue
    out[k2] = v
  return out, dropped


def tower_params(sd: Mapping[str, Any], prefix: str = '') -> dict:
  """Params of models.image.ImageTower from a DINO/timm-layout ViT state dict.

  Only keys under `prefix` are read (with prefix '' the whole dict, after stripping
  'module.' / 'backbone.' and dropping the classifier 'head.*'). peft LoRA keys on any
  Linear give lora_a / lora_b. Arrays are float32 numpy. Raises errors.ConversionError
  listing unknown and missing keys.
  """
  part = mapping.sub(sd, prefix)
  if not prefix:
    part, _ = clean(part)
  r = mapping.Reader(part)
  tree = map_keys(r, '')
  mapping.raise_if_bad('DINO state dict', [prefix + k for k in r.unused()],
                       [prefix + k for k in r.missing], [prefix + k for k in r.misshaped])
  return tree


def tower_fields(params: Mapping[str, Any]) -> dict[str, Any]:
  """ImageTower shape fields of converted DINO params (as config.model.image values)."""
  k = params['patch_embed']['kernel']  # [p, p, 3, D]
  width = int(k.shape[-1])
  depth = len([n for n in params if n.startswith('blocks_')])
  n_pos = int(params['pos_embed'].shape[1]) - 1
  grid = int(round(n_pos ** 0.5))
  if grid * grid != n_pos:
    raise errors.ConversionError(f'pos_embed has {n_pos} patch positions, not a square grid')
  if width % HEAD_WIDTH:
    raise errors.ConversionError(f'ViT width {width} is not a multiple of {HEAD_WIDTH} '
                                 f'(heads = width // {HEAD_WIDTH})')
  out = dict(patch_size=int(k.shape[0]), width=width, depth=depth,
             num_heads=width // HEAD_WIDTH, pos_grid=grid, mixer='attention')
  if depth:
    out['mlp_ratio'] = int(params['blocks_0']['mlp']['fc1']['kernel'].shape[1]) // width
    qkv = params['blocks_0']['attn']['qkv']
    out['lora_rank'] = int(qkv['lora_a'].shape[1]) if 'lora_a' in qkv else 0
  return out
