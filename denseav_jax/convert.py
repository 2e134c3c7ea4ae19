"""Converts PyTorch weights (DINO, Hugging Face HuBERT, released DenseAV) to our checkpoints.

  python -m denseav_jax.convert --source {dino,hubert,denseav} --input PATH --output DIR \
      [--config configs/denseav.py[:VARIANT]] [--config.KEY=VALUE ...] [--allow_pickle]

Writes DIR/params (Orbax) and DIR/config.json (`model_io.save_params`); train with
`--config.init_from=DIR`, or load with `model_io.load_config` / `model_io.load_params`.
The output is always a full DenseAV model (configs/denseav.py unless --config says otherwise):

  dino     a DINO / timm-layout ViT state dict (.pth/.pt/.bin/.safetensors; optionally nested
           under 'model' / 'teacher' / 'state_dict', optional 'module.' / 'backbone.'
           prefixes). The image tower comes from it; everything else is freshly initialised
           (`params.init_params` with `config.seed`). The image tower's shape fields are set
           from the weights: patch size (patch_embed.proj.weight), width, depth, heads =
           width // 64 (the DINO/timm convention: 64-channel heads), MLP ratio, pos_grid
           (from pos_embed).
  hubert   Hugging Face HuBERT weights: a model folder (config.json + model.safetensors or
           pytorch_model.bin, sharded *.index.json too) or one state-dict file; keys with or
           without the 'hubert.' prefix of HubertForCTC; either weight-norm spelling of the
           positional conv (`conv.weight_g` / `weight_v`, or torch's parametrization
           `conv.parametrizations.weight.original0` / `original1`). The audio tower comes from
           it, the rest is freshly initialised. Shape fields set from the weights: width,
           depth, mlp_dim, conv channels and kernels, conv bias (present or not), front-end
           norm ('group' when only conv_layers.0 has a norm, the GroupNorm of HuBERT-Base;
           'layer' when every conv layer has one), feature-projection norm, positional conv
           kernel and groups. From config.json when the folder has one: heads
           (num_attention_heads), conv strides (conv_stride) and the norm order
           (do_stable_layer_norm). Without config.json: heads = width // 64, the standard
           strides (5,2,2,2,2,2,2), and pre-norm ("stable layer norm") exactly for models of
           width >= 1024 -- the published HuBERT-Large / X-Large are pre-norm, HuBERT-Base
           (768) post-norm. LayerNorm eps stays the config's (DenseAV uses 1e-4 everywhere but
           in the conv front end, which keeps torch's 1e-5).
  denseav  a released DenseAV Lightning checkpoint (.ckpt: a torch pickle dict with
           'state_dict' and 'hyper_parameters') or a bare state dict in the release layout,
           with or without peft LoRA on the image (`...qkv.base_layer.weight`,
           `qkv.lora_A.<adapter>.weight`, `qkv.lora_B.<adapter>.weight`) or audio tower
           (q_proj, k_proj, v_proj). Its hyper_parameters set the model, similarity and loss
           fields of the config (see `apply_hparams`; unsupported values are an error), and
           the LoRA ranks and tower shapes are read from the weights.

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
shape; otherwise a ConversionError (a ValueError; one line per kind at the CLI) lists the
unknown, missing and mis-shaped keys. Keys that are deliberately not converted (and printed
as such by the CLI, never dropped silently):
  * DINO / timm `head.*` (the classifier or DINO projection head; not part of the backbone),
    and DINO training checkpoints' non-backbone entries when nested under 'teacher'.
  * Hugging Face `lm_head.*` (HubertForCTC's CTC head; not part of HubertModel).
`masked_spec_embed` (HuBERT's time-mask vector) IS a parameter of our audio tower and is
converted. Hugging Face only creates it when mask_time_prob or mask_feature_prob > 0; for
--source hubert a state dict without it gets U(0, 1) values (Hugging Face's init, seeded)
and a printed note; the released DenseAV state dict has it and it is required there.
"""

import copy
import json
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np

from denseav_jax import configs
from denseav_jax import errors

IMAGE_PREFIXES = ('image_model.base_model.model.model.', 'image_model.model.')
AUDIO_PREFIXES = ('audio_model.base_model.model.model.', 'audio_model.model.')
DEFAULT_CONFIG = 'configs/denseav.py'  # Found in the installed package from any directory.
HUBERT_DEFAULT_STRIDES = (5, 2, 2, 2, 2, 2, 2)
_LORA_A = re.compile(r'^(.*)\.lora_A(?:\.([^.]+))?\.weight$')  # peft < 0.3: no adapter name


class ConversionError(ValueError):
  """The input does not match the model: lists unknown, missing and mis-shaped keys."""


# ------------------------------------------------------------------------ reading files

def _to_numpy(x) -> np.ndarray:
  if hasattr(x, 'detach'):  # torch.Tensor (bf16/fp16 go through float32).
    import torch  # pylint: disable=g-import-not-at-top
    x = x.detach().cpu()
    if x.dtype in (torch.bfloat16, torch.float16):
      x = x.float()
    x = x.numpy()
  x = np.asarray(x)
  # ml_dtypes' bfloat16 / float8 (safetensors.numpy's bf16 arrays) are not np.floating.
  floating = np.issubdtype(x.dtype, np.floating) or x.dtype.name.startswith(('bfloat16', 'float8'))
  return x.astype(np.float32) if floating else x


class _Stub(dict):
  """Stands in for a class whose module is not installed (e.g. Lightning's AttributeDict)."""

  def __init__(self, *args, **kwargs):
    super().__init__()
    if args and isinstance(args[0], Mapping):
      self.update(args[0])
    self.update(kwargs)

  def __setstate__(self, state):
    if isinstance(state, Mapping):
      self.update(state)


class _LenientUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    try:
      return super().find_class(module, name)
    except (ImportError, AttributeError):
      return type(name, (_Stub,), {'__module__': module})


class _LenientPickle:
  Unpickler = _LenientUnpickler
  load = pickle.load
  __name__ = 'pickle'


def _torch_load(path: str, allow_pickle: bool):
  torch = errors.require('torch', 'convert', f'reading {path} (a torch.save file)')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    if not allow_pickle:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ConversionError(
          f'{path} holds Python objects beyond tensors and plain containers ({first}); if you '
          'trust the file, pass --allow_pickle to unpickle it fully') from None
  # Full unpickling (trusted files only); classes of uninstalled modules become dicts.
  return torch.load(path, map_location='cpu', weights_only=False, pickle_module=_LenientPickle)


def _hf_files(folder: str) -> list[str]:
  for index in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
    p = os.path.join(folder, index)
    if os.path.exists(p):
      index = _read_json(p)
      if not isinstance(index, dict) or not isinstance(index.get('weight_map'), dict):
        raise ConversionError(f'{p} has no "weight_map" object: is it a Hugging Face '
                              'sharded-checkpoint index?')
      shards = sorted(set(index['weight_map'].values()))
      return [os.path.join(folder, s) for s in shards]
  for name in ('model.safetensors', 'pytorch_model.bin'):
    p = os.path.join(folder, name)
    if os.path.exists(p):
      return [p]
  raise ConversionError(f'{folder} has no model.safetensors or pytorch_model.bin')


def _read(path: str, allow_pickle: bool = False) -> tuple[Any, dict | None]:
  """(raw loaded object or merged state dict, Hugging Face config.json or None).

  A file that cannot be parsed is a ConversionError naming it (never a bare traceback)."""
  if not os.path.exists(path):
    raise ConversionError(f'--input {path} does not exist')
  if os.path.isdir(path):
    hf_config = None
    cfg_path = os.path.join(path, 'config.json')
    if os.path.exists(cfg_path):
      hf_config = _read_json(cfg_path)
    sd = {}
    for f in _hf_files(path):
      sd.update(_read(f, allow_pickle)[0])
    return sd, hf_config
  try:
    if path.endswith('.safetensors'):
      return _read_safetensors(path), None
    return _torch_load(path, allow_pickle), None
  except (ConversionError, errors.MissingExtra):
    raise
  except Exception as e:  # pylint: disable=broad-except
    kind = 'safetensors' if path.endswith('.safetensors') else 'PyTorch (torch.save)'
    raise ConversionError(f'{path} could not be read as a {kind} file ({type(e).__name__}: '
                          f'{str(e).strip()[:200]}): is it a complete, uncorrupted '
                          'checkpoint?') from None


def _read_safetensors(path: str) -> dict[str, Any]:
  # ml_dtypes (a jax dependency) teaches numpy bfloat16: bf16 files need no torch.
  import ml_dtypes  # pylint: disable=g-import-not-at-top,unused-import
  what = f'reading {path} (a safetensors file)'
  load_file = errors.require('safetensors.numpy', 'convert', what).load_file
  try:
    return dict(load_file(path))
  except TypeError:  # A dtype numpy does not know: read through torch.
    errors.require('torch', 'convert', f'{what}, whose dtypes numpy cannot hold,')
    return dict(errors.require('safetensors.torch', 'convert', what).load_file(path))


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f'{path} is not valid JSON ({e})') from None


def _is_tensor(x) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype') and not isinstance(x, Mapping)


def _unwrap(obj) -> dict[str, Any]:
  """The state dict inside a loaded object (nested under state_dict / model / teacher ...)."""
  for _ in range(4):
    if not isinstance(obj, Mapping):
      break
    if obj and all(_is_tensor(v) for v in obj.values()):
      return dict(obj)
    for key in ('state_dict', 'model', 'teacher', 'module', 'model_state_dict'):
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
    else:
      break
  if not isinstance(obj, Mapping):
    raise ConversionError(f'expected a state dict, found a {type(obj).__name__}')
  tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
  others = sorted(k for k in obj if k not in tensors)
  if not tensors:
    raise ConversionError('no tensors found (entries: ' + ', '.join(map(str, others[:20])) + ')')
  if others:
    raise ConversionError('the state dict mixes tensors with other entries: '
                          + ', '.join(map(str, others[:20])))
  return tensors


def load_torch_file(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Loads a state dict as float32 numpy arrays (integer buffers keep their dtype).

  `path`: a torch file (.pth/.pt/.bin/.ckpt; torch.load(map_location='cpu',
  weights_only=True) unless allow_pickle), a .safetensors file, or a Hugging Face model
  folder. A state dict nested under 'state_dict' / 'model' / 'teacher' is unwrapped.
  """
  obj, _ = _read(path, allow_pickle)
  return {k: _to_numpy(v) for k, v in _unwrap(obj).items()}


# ----------------------------------------------------------------------- key bookkeeping

class _Reader:
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
    if dst is not None:
      self.origin[dst] = key
    if key not in self.sd:
      self.missing.append(key)
      return None
    self.used.add(key)
    x = _to_numpy(self.sd[key])
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


def _put(tree: dict, path: str, value) -> None:
  if value is None:
    return
  keys = path.split('/')
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def _linear_t(w):
  if w.ndim != 2:
    raise ValueError('a Linear weight must be 2-D')
  return np.ascontiguousarray(w.T)


def _conv2d_t(w):
  if w.ndim != 4:
    raise ValueError('a Conv2d weight must be 4-D')
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _conv1d_t(w):
  if w.ndim != 3:
    raise ValueError('a Conv1d weight must be 3-D')
  return np.ascontiguousarray(w.transpose(2, 1, 0))


def _linear(r: _Reader, src: str, dst: str, tree: dict, lora_keys: bool = True) -> None:
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
      raise ConversionError(f'{src}: expected one LoRA adapter, found {adapters or "none"}')
    name = f'.{adapters[0]}' if adapters[0] else ''
    _put(tree, f'{dst}/lora_a', r.get(f'{src}.lora_A{name}.weight', _linear_t,
                                      dst=f'{dst}/lora_a'))
    _put(tree, f'{dst}/lora_b', r.get(f'{src}.lora_B{name}.weight', _linear_t,
                                      dst=f'{dst}/lora_b'))
  _put(tree, f'{dst}/kernel', r.get(f'{base}.weight', _linear_t, dst=f'{dst}/kernel'))
  _put(tree, f'{dst}/bias', r.get(f'{base}.bias', dst=f'{dst}/bias'))


def _norm(r: _Reader, src: str, dst: str, tree: dict) -> None:
  _put(tree, f'{dst}/scale', r.get(f'{src}.weight', dst=f'{dst}/scale'))
  _put(tree, f'{dst}/bias', r.get(f'{src}.bias', dst=f'{dst}/bias'))


def _raise_if_bad(what: str, unknown=(), missing=(), misshaped=()) -> None:
  if not (unknown or missing or misshaped):
    return
  lines = [f'{what} does not match the model:']
  for title, items in (('unknown', unknown), ('missing', missing), ('mis-shaped', misshaped)):
    items = list(items)
    if items:
      lines.append(f'  {len(items)} {title}: ' + ', '.join(items[:60])
                   + (' ...' if len(items) > 60 else ''))
  raise ConversionError('\n'.join(lines))


def _sub(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------- DINO ViT

def _dino(r: _Reader, p: str) -> dict:
  """ImageTower params from a DINO/timm-layout ViT under prefix `p` of reader `r`."""
  tree: dict = {}
  w = r.get(f'{p}patch_embed.proj.weight', _conv2d_t, dst='patch_embed/kernel')
  _put(tree, 'patch_embed/kernel', w)
  _put(tree, 'patch_embed/bias', r.get(f'{p}patch_embed.proj.bias', dst='patch_embed/bias'))
  _put(tree, 'cls_token', r.get(f'{p}cls_token', dst='cls_token'))
  _put(tree, 'pos_embed', r.get(f'{p}pos_embed', dst='pos_embed'))
  for i in r.indices(f'{p}blocks'):
    s, d = f'{p}blocks.{i}', f'blocks_{i}'
    _norm(r, f'{s}.norm1', f'{d}/norm1', tree)
    _norm(r, f'{s}.norm2', f'{d}/norm2', tree)
    _linear(r, f'{s}.attn.qkv', f'{d}/attn/qkv', tree)
    _linear(r, f'{s}.attn.proj', f'{d}/attn/proj', tree)
    _linear(r, f'{s}.mlp.fc1', f'{d}/mlp/fc1', tree)
    _linear(r, f'{s}.mlp.fc2', f'{d}/mlp/fc2', tree)
  _norm(r, f'{p}norm', 'norm', tree)
  return tree


def _clean_dino(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
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


def dino_params(sd: Mapping[str, Any], prefix: str = '') -> dict:
  """Params of models.image.ImageTower from a DINO/timm-layout ViT state dict.

  Only keys under `prefix` are read (with prefix '' the whole dict, after stripping
  'module.' / 'backbone.' and dropping the classifier 'head.*'). peft LoRA keys on any
  Linear give lora_a / lora_b. Arrays are float32 numpy. Raises ConversionError listing
  unknown and missing keys.
  """
  sub = _sub(sd, prefix)
  if not prefix:
    sub, _ = _clean_dino(sub)
  r = _Reader(sub)
  tree = _dino(r, '')
  _raise_if_bad('DINO state dict', [prefix + k for k in r.unused()],
                [prefix + k for k in r.missing], [prefix + k for k in r.misshaped])
  return tree


def dino_fields(params: Mapping[str, Any]) -> dict[str, Any]:
  """ImageTower shape fields of converted DINO params (as config.model.image values)."""
  k = params['patch_embed']['kernel']  # [p, p, 3, D]
  width = int(k.shape[-1])
  depth = len([n for n in params if n.startswith('blocks_')])
  n_pos = int(params['pos_embed'].shape[1]) - 1
  grid = int(round(n_pos ** 0.5))
  if grid * grid != n_pos:
    raise ConversionError(f'pos_embed has {n_pos} patch positions, not a square grid')
  if width % 64:
    raise ConversionError(f'ViT width {width} is not a multiple of 64 (heads = width // 64)')
  out = dict(patch_size=int(k.shape[0]), width=width, depth=depth, num_heads=width // 64,
             pos_grid=grid, mixer='attention')
  if depth:
    out['mlp_ratio'] = int(params['blocks_0']['mlp']['fc1']['kernel'].shape[1]) // width
    qkv = params['blocks_0']['attn']['qkv']
    out['lora_rank'] = int(qkv['lora_a'].shape[1]) if 'lora_a' in qkv else 0
  return out


# ----------------------------------------------------------------------------- HuBERT

def _hubert(r: _Reader, p: str, *, fill_masked_spec: bool) -> tuple[dict, list[str]]:
  """AudioTower params from Hugging Face HubertModel keys under prefix `p`."""
  tree: dict = {}
  notes = []
  for i in r.indices(f'{p}feature_extractor.conv_layers'):
    s, d = f'{p}feature_extractor.conv_layers.{i}', f'conv_layers_{i}'
    _put(tree, f'{d}/conv/kernel', r.get(f'{s}.conv.weight', _conv1d_t, dst=f'{d}/conv/kernel'))
    if r.has(f'{s}.conv.bias'):
      _put(tree, f'{d}/conv/bias', r.get(f'{s}.conv.bias', dst=f'{d}/conv/bias'))
    if r.has(f'{s}.layer_norm.weight'):
      _norm(r, f'{s}.layer_norm', f'{d}/layer_norm', tree)
  fp = f'{p}feature_projection'
  if r.has(f'{fp}.layer_norm.weight'):
    _norm(r, f'{fp}.layer_norm', 'feature_projection/layer_norm', tree)
  _linear(r, f'{fp}.projection', 'feature_projection/projection', tree, lora_keys=False)
  if r.has(f'{p}masked_spec_embed') or not fill_masked_spec:
    _put(tree, 'masked_spec_embed', r.get(f'{p}masked_spec_embed', dst='masked_spec_embed'))
  pc = f'{p}encoder.pos_conv_embed.conv'
  if r.has(f'{pc}.parametrizations.weight.original0'):
    g_key = f'{pc}.parametrizations.weight.original0'
    v_key = f'{pc}.parametrizations.weight.original1'
  else:
    g_key, v_key = f'{pc}.weight_g', f'{pc}.weight_v'
  _put(tree, 'pos_conv_embed/weight_g', r.get(g_key, lambda g: g.reshape(g.shape[-1]),
                                              dst='pos_conv_embed/weight_g'))
  _put(tree, 'pos_conv_embed/weight_v', r.get(v_key, _conv1d_t, dst='pos_conv_embed/weight_v'))
  _put(tree, 'pos_conv_embed/bias', r.get(f'{pc}.bias', dst='pos_conv_embed/bias'))
  _norm(r, f'{p}encoder.layer_norm', 'layer_norm', tree)
  for i in r.indices(f'{p}encoder.layers'):
    s, d = f'{p}encoder.layers.{i}', f'layers_{i}'
    for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      _linear(r, f'{s}.attention.{proj}', f'{d}/attention/{proj}', tree)
    _norm(r, f'{s}.layer_norm', f'{d}/layer_norm', tree)
    _linear(r, f'{s}.feed_forward.intermediate_dense', f'{d}/feed_forward/intermediate_dense',
            tree)
    _linear(r, f'{s}.feed_forward.output_dense', f'{d}/feed_forward/output_dense', tree)
    _norm(r, f'{s}.final_layer_norm', f'{d}/final_layer_norm', tree)
  if 'masked_spec_embed' not in tree and fill_masked_spec:
    proj = tree.get('feature_projection', {}).get('projection', {}).get('kernel')
    if proj is not None:
      rng = np.random.default_rng(0)
      tree['masked_spec_embed'] = rng.uniform(size=(proj.shape[1],)).astype(np.float32)
      notes.append('masked_spec_embed is not in the input (Hugging Face creates it only when '
                   'mask_time_prob or mask_feature_prob > 0): initialised U(0, 1)')
  return tree, notes


def _clean_hubert(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Strips HubertForCTC's 'hubert.' prefix and drops its 'lm_head.*'."""
  dropped = sorted(k for k in sd if k.startswith('lm_head.'))
  sd = {k: v for k, v in sd.items() if not k.startswith('lm_head.')}
  if sd and all(k.startswith('hubert.') for k in sd):
    sd = {k[len('hubert.'):]: v for k, v in sd.items()}
  return sd, dropped


def hubert_params(sd: Mapping[str, Any], prefix: str = '') -> dict:
  """Params of models.audio.AudioTower from Hugging Face HubertModel keys.

  Only keys under `prefix` are read (with prefix '' the whole dict, after stripping a
  'hubert.' prefix and dropping HubertForCTC's 'lm_head.*'). Both weight-norm spellings are
  accepted. A missing masked_spec_embed (Hugging Face omits it when no masking is
  configured) is filled with U(0, 1) values. Raises ConversionError listing unknown and
  missing keys.
  """
  sub = _sub(sd, prefix)
  if not prefix:
    sub, _ = _clean_hubert(sub)
  r = _Reader(sub)
  tree, _ = _hubert(r, '', fill_masked_spec=True)
  _raise_if_bad('HuBERT state dict', [prefix + k for k in r.unused()],
                [prefix + k for k in r.missing], [prefix + k for k in r.misshaped])
  return tree


def hubert_fields(params: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
  """AudioTower shape fields of converted HuBERT params (config.model.audio values)."""
  hf = dict(hf_config or {})
  convs = sorted((int(n.split('_')[-1]), v) for n, v in params.items()
                 if n.startswith('conv_layers_'))
  if not convs:
    raise ConversionError('no feature_extractor.conv_layers.* keys: not a HuBERT state dict')
  kernels = tuple(int(v['conv']['kernel'].shape[0]) for _, v in convs)
  normed = [i for i, v in convs if 'layer_norm' in v]
  if normed == [i for i, _ in convs]:
    norm = 'layer'
  elif normed == [0]:
    norm = 'group'
  else:
    raise ConversionError(f'conv feature extractor with norms on layers {normed}: expected '
                          "all (feat_extract_norm='layer') or only the first ('group')")
  if 'conv_stride' in hf:
    strides = tuple(int(s) for s in hf['conv_stride'])
  elif len(kernels) == len(HUBERT_DEFAULT_STRIDES):
    strides = HUBERT_DEFAULT_STRIDES
  else:
    raise ConversionError(f'{len(kernels)} conv layers but no config.json with conv_stride: '
                          'pass the Hugging Face model folder')
  width = int(params['feature_projection']['projection']['kernel'].shape[1])
  v = params['pos_conv_embed']['weight_v']  # [K, D / groups, D]
  layers = [n for n in params if n.startswith('layers_')]
  heads = int(hf.get('num_attention_heads', width // 64))
  if 'do_stable_layer_norm' in hf:
    norm_first = bool(hf['do_stable_layer_norm'])
  else:
    norm_first = width >= 1024
  out = dict(
      frontend='conv', conv_channels=int(convs[0][1]['conv']['kernel'].shape[-1]),
      conv_kernels=kernels, conv_strides=strides,
      conv_bias='bias' in convs[0][1]['conv'], feat_extract_norm=norm,
      feat_proj_layer_norm='layer_norm' in params['feature_projection'], width=width,
      depth=len(layers), num_heads=heads, pos_conv_kernel=int(v.shape[0]),
      pos_conv_groups=width // int(v.shape[1]), norm_first=norm_first)
  if layers:
    ff = params['layers_0']['feed_forward']
    out['mlp_dim'] = int(ff['intermediate_dense']['kernel'].shape[1])
    q = params['layers_0']['attention']['q_proj']
    out['lora_rank'] = int(q['lora_a'].shape[1]) if 'lora_a' in q else 0
  return out


# ---------------------------------------------------------------------- full DenseAV

def _flat(tree, prefix='') -> dict[str, Any]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}/'))
  else:
    out[prefix[:-1]] = tree
  return out


def _unflat(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for k, v in flat.items():
    _put(tree, k, v)
  return tree


def _generic(r: _Reader, src: str, dst: str, target: Mapping[str, Any], out: dict) -> None:
  """Target-driven mapping for the aligners and SimPool: our path a/mod_list_N/b/kernel
  <- release key a.mod_list.N.b.weight, reshaped by the target's rank."""
  for path, want in _flat(target).items():
    parts = path.split('/')
    key = '.'.join(re.sub(r'^(mod_list|blocks)_(\d+)$', r'\1.\2', q) for q in parts[:-1])
    leaf = {'kernel': 'weight', 'scale': 'weight'}.get(parts[-1], parts[-1])
    key = f'{src}{key}.{leaf}' if key else f'{src}{leaf}'
    nd = len(want.shape)

    def transform(x, nd=nd, leaf=parts[-1]):
      if leaf != 'kernel':
        return x
      if x.ndim == 2:
        return _linear_t(x)
      if x.ndim == 4 and nd == 2:  # 1x1 conv computed as a Linear.
        if x.shape[2:] != (1, 1):
          raise ValueError('expected a 1x1 conv')
        return np.ascontiguousarray(x[:, :, 0, 0].T)
      if x.ndim == 4:
        return _conv2d_t(x)
      return x
    _put(out, f'{dst}/{path}', r.get(key, transform, dst=f'{dst}/{path}'))


def _scalar(r: _Reader, key: str, dst: str, out: dict) -> None:
  x = r.get(key, dst=dst)
  if x is not None:
    if x.size != 1:
      r.misshaped.append(f'{key}: {x.shape} (expected one value)')
    else:
      out[dst] = np.float32(x.reshape(()))


def _prefix(r: _Reader, options: tuple[str, ...]) -> str:
  for p in options:
    if any(k.startswith(p) for k in r.sd):
      return p
  return options[-1]


_ABSTRACT: dict[str, Any] = {}


def abstract_params(config) -> dict:
  """jax.eval_shape of params.init_params for `config` (the tree a conversion must fill)."""
  key = config.to_json_best_effort(sort_keys=True)
  if key not in _ABSTRACT:
    _ABSTRACT.clear()
    _ABSTRACT[key] = _abstract_params(config)
  return _ABSTRACT[key]


def _abstract_params(config) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  model = denseav.build_model(config)
  return jax.eval_shape(lambda k: params_lib.init_params(config, model, k), jax.random.key(0))


def _strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Removes DeepSpeed's '_forward_module.' and DDP's 'module.' wrappers."""
  for pre in ('_forward_module.', 'module.'):
    if sd and all(k.startswith(pre) for k in sd):
      sd = {k[len(pre):]: v for k, v in sd.items()}
  return dict(sd)


def denseav_params(sd: Mapping[str, Any], config, *, target=None) -> dict:
  """Full DenseAV params (the tree of `params.init_params(config, ...)`) from a state dict in
  the release layout. `config` must describe the same model (see `infer_config`).
  Raises ConversionError listing unknown, missing and mis-shaped keys. `target`: the
  tree of `abstract_params(config)` if already at hand."""
  r = _Reader(_strip_wrappers(sd))
  target = abstract_params(config) if target is None else target
  got: dict = {}
  image_p, audio_p = _prefix(r, IMAGE_PREFIXES), _prefix(r, AUDIO_PREFIXES)
  got['image_model'] = _dino(r, image_p)
  origin = {f'image_model/{k}': v for k, v in r.origin.items()}
  r.origin = {}
  got['audio_model'], _ = _hubert(r, audio_p, fill_masked_spec=False)
  origin.update({f'audio_model/{k}': v for k, v in r.origin.items()})
  r.origin = origin
  for name, src in (('image_aligner', 'image_aligner.'), ('audio_aligner', 'audio_aligner.'),
                    ('simpool', 'sim_agg.pool.')):
    if name in target:
      _generic(r, src, name, target[name], got)
  if 'audio_cls' in target:
    _put(got, 'audio_cls', r.get('audio_cls', dst='audio_cls'))
  _scalar(r, 'sim_cal.w', 'sim_cal_w', got)
  if 'sim_cal_b' in target or r.has('sim_cal.b'):
    _scalar(r, 'sim_cal.b', 'sim_cal_b', got)
  r.origin.setdefault('sim_cal_w', 'sim_cal.w')
  r.origin.setdefault('sim_cal_b', 'sim_cal.b')

  g, w = _flat(got), _flat(target)
  name = lambda k: f'{r.origin[k]} (-> {k})' if k in r.origin else k
  unknown = r.unused() + sorted(name(k) for k in set(g) - set(w))
  if 'sim_cal.b' in unknown or 'sim_cal.b (-> sim_cal_b)' in unknown:
    unknown.append('(sim_cal.b exists only for loss types other than nce: set '
                   '--config.loss.type)')
  # A parameter whose source key was looked up is listed under that key already.
  missing = sorted(set(r.missing)) + sorted(k for k in set(w) - set(g) if k not in r.origin)
  misshaped = r.misshaped + sorted(
      f'{name(k)}: {tuple(np.shape(g[k]))} after conversion, expected {tuple(w[k].shape)}'
      for k in set(g) & set(w) if tuple(np.shape(g[k])) != tuple(w[k].shape))
  _raise_if_bad('DenseAV state dict', unknown, missing, misshaped)
  return _unflat({k: np.asarray(v, np.float32) for k, v in g.items()})


# ------------------------------------------------------------------------------ config

def load_default_config(spec: str | None = None):
  """configs/denseav.py[:VARIANT] (or another config file) loaded as the CLI would."""
  config = configs.load(spec or DEFAULT_CONFIG)
  if spec is None:
    # A converted model computes in float32, as the PyTorch release does at inference (the
    # training config's bf16 would cost the parity); train from it in bf16 with
    # --config.model.dtype=bfloat16.
    config.model.dtype = 'float32'
  return config


def _set_tower(cfg, fields: Mapping[str, Any]) -> None:
  fields = dict(fields)
  rank = fields.pop('lora_rank', None)
  for k, v in fields.items():
    cfg[k] = list(v) if isinstance(v, tuple) and isinstance(cfg.get(k), list) else v
  if rank is not None:
    cfg.lora.rank = rank


IMAGE_MODEL_TYPES = {'dino8': 'vit_small_8', 'dino16': 'vit_small_16', 'vit': 'vit_small_16'}
LOSS_TYPES = ('nce', 'ce', 'bce', 'margin')


def apply_hparams(config, hp: Mapping[str, Any]) -> list[str]:
  """Sets the config from a release checkpoint's hyper_parameters (in place).

  Model: code_dim, sim_agg_heads -> model.num_heads, image_model_type (dino8 / dino16 / vit
  -> DINO ViT-S/8 or S/16), image_model_token_type, image/audio_aligner_type,
  image_pool_width -> model.train_image_pool, image_lora(_rank) / audio_lora(_rank) (alpha
  32, dropout 0.1, targets qkv / q,k,v_proj as peft in the release), finetune_*_model.
  Similarity: sim_agg_type, head_agg, sim_use_cls, nonneg_sim, mask_silence, cal_init.
  Loss: loss_type, loss_margin, loss_leak and the regulariser weights. Training: lr,
  lr_warmup, gradient_clipping. Absent keys keep the config's value. Raises ConversionError
  for values our model does not implement. Returns notes on ignored training-only settings.
  """
  from denseav_jax.similarity import dense  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import aligners  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import image as image_lib  # pylint: disable=g-import-not-at-top
  errors, notes = [], []
  m = config.model

  def check(key, ok, allowed):
    if key in hp and not ok(hp[key]):
      errors.append(f'{key}={hp[key]!r} (supported: {allowed})')
      return False
    return key in hp

  if check('image_model_type', lambda v: v in IMAGE_MODEL_TYPES, sorted(IMAGE_MODEL_TYPES)):
    m.image.update(image_lib.VIT_VARIANTS[IMAGE_MODEL_TYPES[hp['image_model_type']]])
    m.image.pos_grid = 224 // m.image.patch_size
  if check('image_model_token_type', lambda v: v in ('token', 'key'), ['token', 'key']):
    m.image.token_type = hp['image_model_token_type']
  check('audio_model_type', lambda v: v == 'hubert', ['hubert'])
  if check('image_aligner_type', lambda v: v in aligners.IMAGE_ALIGNERS,
           list(aligners.IMAGE_ALIGNERS)):
    m.image_aligner = hp['image_aligner_type']
  if check('audio_aligner_type', lambda v: v in aligners.AUDIO_ALIGNERS,
           list(aligners.AUDIO_ALIGNERS)):
    m.audio_aligner = hp['audio_aligner_type']
  if check('code_dim', lambda v: int(v) > 0, 'a positive integer'):
    m.code_dim = int(hp['code_dim'])
  if check('sim_agg_heads', lambda v: int(v) > 0, 'a positive integer'):
    m.num_heads = int(hp['sim_agg_heads'])
  if check('image_pool_width', lambda v: int(v) >= 1, 'an integer >= 1'):
    m.train_image_pool = int(hp['image_pool_width'])
  check('audio_pool_width', lambda v: v in (None, 0, 1), [1])
  check('learn_audio_cls', lambda v: bool(v), [True])
  check('norm_vectors', lambda v: not v, [False])
  if hp.get('use_cached_embs'):
    notes.append('use_cached_embs=True: the release trained on precomputed audio features; '
                 'the converted model runs the audio tower (its weights must be in the file), '
                 'as the release does at inference')
  for key, tower, targets in (('image_lora', 'image', ('qkv',)),
                              ('audio_lora', 'audio', ('q_proj', 'k_proj', 'v_proj'))):
    if key in hp:
      rank = int(hp.get(f'{key}_rank', 8)) if hp[key] else 0
      m[tower].lora.update(rank=rank, alpha=32.0, dropout=0.1, targets=targets)
  for key, tower in (('finetune_image_model', 'image'), ('finetune_audio_model', 'audio')):
    if key in hp:
      m[tower].finetune = bool(hp[key])
    if m[tower].lora.rank > 0 and hp.get(f'{tower}_lora'):
      # peft's get_peft_model freezes every non-adapter weight of the tower it wraps.
      if m[tower].finetune:
        notes.append(f'{tower}_lora=True: the {tower} tower\'s own weights are frozen '
                     '(peft trains only the adapters), whatever ' + key + ' says')
      m[tower].finetune = False
  if check('sim_agg_type', lambda v: v in dense.AGGREGATORS, list(dense.AGGREGATORS)):
    config.sim.agg = hp['sim_agg_type']
  if check('head_agg', lambda v: v in dense.HEAD_AGGREGATIONS,
           list(dense.HEAD_AGGREGATIONS)):
    config.sim.head_agg = hp['head_agg']
  for key, dst in (('sim_use_cls', 'use_cls'), ('nonneg_sim', 'nonneg'),
                   ('mask_silence', 'mask_silence')):
    if key in hp:
      config.sim[dst] = bool(hp[key])
  if 'cal_init' in hp:
    config.sim.cal_init = float(hp['cal_init'])
  if check('loss_type', lambda v: v in LOSS_TYPES, list(LOSS_TYPES)):
    config.loss.type = hp['loss_type']
  for key, dst in (('loss_margin', 'margin'), ('loss_leak', 'leak'),
                   ('tv_weight', 'tv_weight'), ('neg_audio_weight', 'neg_audio_weight'),
                   ('mixup_weight', 'mixup_weight'), ('silence_l1', 'silence_l1'),
                   ('silence_l2', 'silence_l2'), ('nonneg_pressure', 'nonneg_pressure'),
                   ('cal_balance_weight', 'cal_balance_weight'),
                   ('specialization_weight', 'specialization_weight'),
                   ('disentangle_weight', 'disentangle_weight')):
    if hp.get(key) is not None:
      config.loss[dst] = float(hp[key])
  if hp.get('neg_audio') is False:
    config.loss.neg_audio_weight = 0.0
  if hp.get('lr') is not None:
    config.lr = float(hp['lr'])
  if hp.get('lr_warmup') is not None:
    config.warmup_steps = int(hp['lr_warmup'])
  if hp.get('gradient_clipping') is not None:
    config.grad_clip_per_tensor = float(hp['gradient_clipping'])
  if 'lr_schedule' in hp and hp['lr_schedule'] in (None, 'constant'):
    config.lr_schedule = 'constant'  # The release's default: warm-up, then constant.
  elif hp.get('lr_schedule') is not None:
    notes.append(f"lr_schedule={hp['lr_schedule']!r} is not reproduced (kept "
                 f'config.lr_schedule={config.lr_schedule!r})')
  for key in ('spatial_dropout', 'channel_dropout', 'memory_buffer_size'):
    if hp.get(key):
      notes.append(f'{key}={hp[key]!r} (training only) is not reproduced')
  if errors:
    raise ConversionError('unsupported hyper_parameters: ' + '; '.join(errors))
  return notes


def infer_config(sd: Mapping[str, Any], config, hparams: Mapping[str, Any] | None = None):
  """A copy of `config` describing the model in release-layout state dict `sd`:
  hyper_parameters first (`apply_hparams`), then the tower shapes and LoRA ranks read from
  the weights. Returns (config, notes)."""
  config = copy.deepcopy(config)
  notes = apply_hparams(config, hparams) if hparams else []
  sd = _strip_wrappers(sd)
  r = _Reader(sd)
  image_p, audio_p = _prefix(r, IMAGE_PREFIXES), _prefix(r, AUDIO_PREFIXES)
  try:
    if any(k.startswith(image_p) for k in sd):
      _set_tower(config.model.image, dino_fields(_dino(_Reader(sd), image_p)))
    if any(k.startswith(audio_p) for k in sd):
      audio, _ = _hubert(_Reader(sd), audio_p, fill_masked_spec=True)
      _set_tower(config.model.audio, hubert_fields(audio))
  except (KeyError, ConversionError) as e:  # denseav_params lists what is missing.
    notes.append(f'could not read the tower shapes from the weights ({e})')
  if 'sim_cal.b' in sd and config.loss.type == 'nce' and not hparams:
    notes.append('sim_cal.b present: the checkpoint was trained with a loss other than nce; '
                 'set --config.loss.type')
  return config, notes


# --------------------------------------------------------------------------------- CLI

def _tree_lines(tree) -> list[str]:
  return [f'  {k} {tuple(v.shape)}' for k, v in sorted(_flat(tree).items())]


def _fresh_params(config):
  """params.init_params for `config` (its input sizes shrunk: parameters do not depend on
  them once pos_grid is fixed, and init then runs in seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  small = copy.deepcopy(config)
  small.input.image_size = 2 * small.model.image.patch_size
  small.input.audio_samples = small.input.sample_rate
  model = denseav.build_model(small)
  params = jax.jit(lambda k: params_lib.init_params(small, model, k))(jax.random.key(config.seed))
  return jax.tree.map(np.asarray, params)


def convert(source: str, path: str, config, allow_pickle: bool = False,
            log=print) -> tuple[dict, Any]:
  """(params, config) converted from `path`; `config` is the base run config."""
  config = copy.deepcopy(config)
  if source == 'denseav':
    obj, _ = _read(path, allow_pickle)
    hparams = None
    if isinstance(obj, Mapping) and 'state_dict' in obj:
      hparams = obj.get('hyper_parameters')
      hparams = dict(hparams) if isinstance(hparams, Mapping) else None
    sd = {k: _to_numpy(v) for k, v in _unwrap(obj).items()}
    log(f'Read {len(sd)} tensors from {path}'
        + (' with hyper_parameters' if hparams else ' (no hyper_parameters: model fields '
           'from --config)'))
    if not hparams:
      # The weights fix the tower shapes but not the similarity settings.
      log(f'WARNING: the similarity settings are not stored in a bare state dict; using '
          f'--config\'s: model.num_heads={config.model.num_heads}, '
          f'sim.agg={config.sim.agg!r}, sim.use_cls={config.sim.use_cls}. For the '
          'released two-head (sound + language) model pass --config '
          'configs/denseav.py:twohead.')
    config, notes = infer_config(sd, config, hparams)
    for n in notes:
      log(f'note: {n}')
    return denseav_params(sd, config, target=abstract_params(config)), config
  if source not in ('dino', 'hubert'):
    raise ConversionError(f"--source must be dino, hubert or denseav, got {source!r}")
  obj, hf_config = _read(path, allow_pickle)
  sd = {k: _to_numpy(v) for k, v in _unwrap(obj).items()}
  if source == 'dino':
    sd, dropped = _clean_dino(sd)
    tower, notes = dino_params(sd), []
    fields = dino_fields(tower)
    key, cfg = 'image_model', config.model.image
  else:
    sd, dropped = _clean_hubert(sd)
    r = _Reader(sd)
    tower, notes = _hubert(r, '', fill_masked_spec=True)
    _raise_if_bad('HuBERT state dict', r.unused(), r.missing, r.misshaped)
    fields = hubert_fields(tower, hf_config)
    key, cfg = 'audio_model', config.model.audio
  if dropped:
    log(f'Not converted (not part of the backbone): {", ".join(sorted(dropped))}')
  for n in notes:
    log(f'note: {n}')
  if not fields.get('lora_rank'):
    # Pretrained weights without adapters: the config's LoRA (if any) starts fresh
    # (A random, B zero), as the release adds peft LoRA on top of the pretrained DINO.
    fields.pop('lora_rank', None)
    if int(cfg.lora.rank):
      log(f'note: LoRA adapters (rank {cfg.lora.rank}) on {key} are freshly initialised')
  _set_tower(cfg, fields)
  target = abstract_params(config)
  params = _fresh_params(config)
  fresh, given = _flat(params[key]), _flat(tower)
  unknown = sorted(f'{key}/{k}' for k in set(given) - set(fresh))
  missing = sorted(f'{key}/{k}' for k in set(fresh) - set(given)
                   if k.rsplit('/', 1)[-1] not in ('lora_a', 'lora_b'))
  params[key] = _unflat({**fresh, **{k: v for k, v in given.items() if k in fresh}})
  g, w = _flat(params), _flat(target)
  _raise_if_bad(
      f'{source} weights', unknown + sorted(set(g) - set(w)), missing + sorted(set(w) - set(g)),
      sorted(f'{k}: {tuple(np.shape(g[k]))} after conversion, expected {tuple(w[k].shape)}'
             for k in set(g) & set(w) if tuple(np.shape(g[k])) != tuple(w[k].shape)))
  return params, config


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from denseav_jax.checkpoint import model_io  # pylint: disable=g-import-not-at-top
  from denseav_jax import cli  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.source:
    raise errors.UserError('--source is required (dino, hubert or denseav)')
  if not f.input:
    raise errors.UserError('--input is required')
  if not f.output:
    raise errors.UserError('--output is required')
  if os.path.exists(os.path.join(f.output, model_io.PARAMS_DIR)):
    raise errors.UserError(f'{os.path.join(f.output, model_io.PARAMS_DIR)} exists: choose a new '
                        '--output directory')
  config = f.config
  if config is None:
    config = load_default_config()
  else:
    try:
      config.get('seed')
    except OSError as e:
      raise errors.UserError(f'could not load --config ({e})') from None
  try:
    params, config = convert(f.source, f.input, config, allow_pickle=f.allow_pickle)
  except ConversionError as e:
    raise errors.UserError(str(e)) from None
  target = abstract_params(config)
  print('Parameter tree (jax.eval_shape of params.init_params for the converted config):')
  print('\n'.join(_tree_lines(target)))
  n = sum(int(np.prod(x.shape)) for x in _flat(target).values())
  print(f'{n:,} parameters')
  out = model_io.save_params(f.output, params, config)
  print(f'Wrote {out}/{model_io.PARAMS_DIR} and {out}/{model_io.CONFIG_FILE}')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from denseav_jax import cli  # pylint: disable=g-import-not-at-top
  cli.define_flags(workdir=False)
  flags.DEFINE_enum('source', None, ['dino', 'hubert', 'denseav'], 'What --input holds.')
  flags.DEFINE_string('input', None, 'Checkpoint file or Hugging Face model folder.')
  flags.DEFINE_string('output', None, 'Output directory (DIR/params + DIR/config.json).')
  flags.DEFINE_bool('allow_pickle', False, 'Unpickle --input fully if it holds Python objects '
                    'beyond tensors (trusted files only).')


if __name__ == '__main__':
  _define_flags()
  from denseav_jax import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run_main(main)
