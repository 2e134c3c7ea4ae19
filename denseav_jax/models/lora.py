"""LoRA utilities over parameter trees (the adapters themselves live in layers.Linear).

`merge(params, config)` folds every adapter into its base kernel,
W' = W + A B * alpha / rank, and returns parameters and a config without LoRA: the merged
model computes the same function at inference (LoRA dropout is off there) with no extra
matmuls. `count(params)` reports adapter and total parameter counts.
"""

import copy

import jax
import jax.numpy as jnp
import ml_collections

TOWERS = (('image_model', 'image'), ('audio_model', 'audio'))


def _merge_tree(tree, scale: float):
  if not isinstance(tree, dict):
    return tree
  if 'lora_a' in tree and 'lora_b' in tree:
    out = {k: v for k, v in tree.items() if k not in ('lora_a', 'lora_b')}
    a = jnp.asarray(tree['lora_a'], jnp.float32)
    b = jnp.asarray(tree['lora_b'], jnp.float32)
    delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST) * scale
    out['kernel'] = (jnp.asarray(tree['kernel'], jnp.float32) + delta).astype(
        tree['kernel'].dtype)
    return out
  return {k: _merge_tree(v, scale) for k, v in tree.items()}


def merge(params, config: ml_collections.ConfigDict):
  """(params, config) -> (params with adapters folded in, config with lora.rank = 0)."""
  params = dict(params)
  config = copy.deepcopy(config)
  for tower, key in TOWERS:
    lora_cfg = config.model[key].lora
    if not int(lora_cfg.rank):
      continue
    scale = float(lora_cfg.alpha) / int(lora_cfg.rank)
    params[tower] = _merge_tree(jax.tree.map(lambda x: x, params[tower]), scale)
    lora_cfg.rank = 0
  return params, config


def count(params) -> dict[str, int]:
  """{'lora': adapter parameters, 'total': all parameters}."""
  n_lora = 0
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    if getattr(path[-1], 'key', None) in ('lora_a', 'lora_b'):
      n_lora += x.size
  return dict(lora=int(n_lora), total=int(sum(x.size for x in jax.tree.leaves(params))))
