"""The key bookkeeping and layout changes every source shares.

Parameter naming mirrors the release: `blocks.N` -> `blocks_N`, `mod_list.N` -> `mod_list_N`,
`conv_layers.N` -> `conv_layers_N`, `encoder.layers.N` -> `layers_N`, `encoder.layer_norm` ->
`layer_norm`, `pos_conv_embed.conv` -> `pos_conv_embed`, `sim_cal.w` [1] -> scalar `sim_cal_w`,
`sim_cal.b` [1] -> `sim_cal_b` (losses other than nce), `sim_agg.pool.*` -> `simpool/*`.
Layouts: LayerNorm / GroupNorm weight -> scale; Linear weight [out, in] -> kernel [in, out];
Conv2d [out, in, kh, kw] -> kernel [kh, kw, in, out] (a 1x1 conv that we compute as a Linear:
[in, out]); Conv1d [out, in, k] -> [k, in, out]; weight norm g [1, 1, K] -> weight_g [K],
v [out, in / groups, K] -> weight_v [K, in / groups, out]; LoRA A [r, in] -> lora_a [in, r],
B [out, r] -> lora_b [r, out] (peft's y = base(x) + B(A(x)) * alpha / r is our
x W + b + x A B * alpha / r; alpha stays the config's, 32 in the release).

Validation: every input key must be used and every model parameter filled with the right
shape; otherwise `raise_if_bad` raises errors.ConversionError listing the unknown, missing and
mis-shaped keys (one line per kind).
"""

import re
from typing import Any, Mapping

import numpy as np

from denseav_jax import errors
from denseav_jax import io
from denseav_jax.conversion import torch_io

_LORA_A = re.compile(r'^(.*)\.lora_A(?:\.([^.]+))?\.weight$')  # peft < 0.3: no adapter name
_MAX_LISTED = 60  # Keys listed per kind in an error; the rest are counted.


class Reader:
  """A state dict whose keys are ticked off as they are used; missing keys are collected."""

  def __init__(self, sd: Mapping[str, Any]):
    self.sd = dict(sd)
    self.used: set[str] = set()
    self.missing: list[str] = []
    self.origin: dict[str, str] = {}  # our path 'a/b/c' -> source key
    self.misshaped: list[str] = []  # keys whose array could not take our layout

  def has(self, key: str) -> bool:
    return key in self.sd

  def get(self, key: str, transform=None, *, dst: str | None = None):
    """The array at `key` (float32 numpy, through `transform`), or None when it is missing
    or `transform` rejects its shape (both recorded); `dst` is our path, for messages."""
    if dst is not None:
      self.origin[dst] = key
    if key not in self.sd:
      self.missing.append(key)
      return None
    self.used.add(key)
    x = torch_io.to_numpy(self.sd[key])
    if transform is not None:
      try:
        x = transform(x)
      except (ValueError, IndexError) as e:
        self.misshaped.append(f'{key}: {x.shape} ({e})')
        return None
    return x

  def unused(self, prefix: str = '') -> list[str]:
    return sorted(k for k in self.sd if k.startswith(prefix) and k not in self.used)

  def indices(self, prefix: str) -> list[int]:
    """Sorted N of keys `prefix.N.*`."""
    out = set()
    pat = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    for k in self.sd:
      m = pat.match(k)
      if m:
        out.add(int(m.group(1)))
    return sorted(out)


def put(tree: dict, path: str, value) -> None:
  """tree[a][b][c] = value for path 'a/b/c'; a None value (a missing key) is skipped."""
  if value is None:
    return
  keys = path.split('/')
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def linear_t(w):
  if w.ndim != 2:
    raise ValueError('a Linear weight must be 2-D')
  return np.ascontiguousarray(w.T)


def conv2d_t(w):
  if w.ndim != 4:
    raise ValueError('a Conv2d weight must be 4-D')
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv1d_t(w):
  if w.ndim != 3:
    raise ValueError('a Conv1d weight must be 3-D')
  return np.ascontiguousarray(w.transpose(2, 1, 0))


def linear(r: Reader, src: str, dst: str, tree: dict, lora_keys: bool = True) -> None:
  """A torch Linear at `src` (plain or peft-wrapped) -> our Linear params at `dst`.

  peft >= 0.7 keeps the wrapped weight at `src.base_layer.weight`; older peft left it at
  `src.weight` beside `src.lora_A.<adapter>.weight`. Both are read."""
  base = src
  wrapped = lora_keys and r.has(f'{src}.base_layer.weight')
  adapters = sorted({m.group(2) or '' for k in r.sd
                     if (m := _LORA_A.match(k)) and m.group(1) == src}) if lora_keys else []
  if wrapped or adapters:
    if wrapped:
      base = f'{src}.base_layer'
    if len(adapters) != 1:
      raise errors.ConversionError(
          f'{src}: expected one LoRA adapter, found {adapters or "none"}')
    name = f'.{adapters[0]}' if adapters[0] else ''
    put(tree, f'{dst}/lora_a', r.get(f'{src}.lora_A{name}.weight', linear_t,
                                     dst=f'{dst}/lora_a'))
    put(tree, f'{dst}/lora_b', r.get(f'{src}.lora_B{name}.weight', linear_t,
                                     dst=f'{dst}/lora_b'))
  put(tree, f'{dst}/kernel', r.get(f'{base}.weight', linear_t, dst=f'{dst}/kernel'))
  put(tree, f'{dst}/bias', r.get(f'{base}.bias', dst=f'{dst}/bias'))


def norm(r: Reader, src: str, dst: str, tree: dict) -> None:
  """A torch LayerNorm / GroupNorm at `src` -> scale and bias at `dst`."""
  put(tree, f'{dst}/scale', r.get(f'{src}.weight', dst=f'{dst}/scale'))
  put(tree, f'{dst}/bias', r.get(f'{src}.bias', dst=f'{dst}/bias'))


def _kernel_t(x, nd: int):
  """A Linear or Conv2d weight in our layout; a 1x1 conv we compute as a Linear (`nd` 2)."""
  if x.ndim == 2:
    return linear_t(x)
  if x.ndim == 4 and nd == 2:
    if x.shape[2:] != (1, 1):
      raise ValueError('expected a 1x1 conv')
    return np.ascontiguousarray(x[:, :, 0, 0].T)
  if x.ndim == 4:
    return conv2d_t(x)
  return x


def target_driven(r: Reader, src: str, dst: str, target: Mapping[str, Any], out: dict) -> None:
  """Maps the modules whose release keys follow our tree (the aligners, SimPool): our path
  a/mod_list_N/b/kernel <- release key a.mod_list.N.b.weight, reshaped by the target's rank."""
  for path, want in io.flatten(target).items():
    parts = path.split('/')
    key = '.'.join(re.sub(r'^(mod_list|blocks)_(\d+)$', r'\1.\2', q) for q in parts[:-1])
    leaf = {'kernel': 'weight', 'scale': 'weight'}.get(parts[-1], parts[-1])
    key = f'{src}{key}.{leaf}' if key else f'{src}{leaf}'
    nd = len(want.shape)
    transform = (lambda x, nd=nd: _kernel_t(x, nd)) if parts[-1] == 'kernel' else None
    put(out, f'{dst}/{path}', r.get(key, transform, dst=f'{dst}/{path}'))


def sub(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """The entries under `prefix`, with it removed."""
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def shape_mismatches(got: Mapping[str, Any], want: Mapping[str, Any], name=str) -> list[str]:
  """'<name(k)>: <got shape> after conversion, expected <want shape>' for each flat key of
  both trees whose shapes differ."""
  return sorted(
      f'{name(k)}: {tuple(np.shape(got[k]))} after conversion, expected {tuple(want[k].shape)}'
      for k in set(got) & set(want) if tuple(np.shape(got[k])) != tuple(want[k].shape))


def raise_if_bad(what: str, unknown=(), missing=(), misshaped=()) -> None:
  """errors.ConversionError listing each kind of mismatch, if there is any."""
  if not (unknown or missing or misshaped):
    return
  lines = [f'{what} does not match the model:']
  for title, items in (('unknown', unknown), ('missing', missing), ('mis-shaped', misshaped)):
    items = list(items)
    if items:
      lines.append(f'  {len(items)} {title}: ' + ', '.join(items[:_MAX_LISTED])
                   + (' ...' if len(items) > _MAX_LISTED else ''))
  raise errors.ConversionError('\n'.join(lines))
