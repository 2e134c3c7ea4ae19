"""Reading PyTorch checkpoints into float32 numpy state dicts.

Reads torch.save files (.pth / .pt / .bin / .ckpt) with `torch.load(weights_only=True)`
unless the caller allows full unpickling, .safetensors files (through numpy, so bf16 needs no
torch), and Hugging Face model folders (config.json + one or sharded weight files). A file
that cannot be read is a ConversionError naming it, never a bare traceback; a missing
optional package is errors.MissingExtra naming the `convert` extra.
"""

import json
import os
import pickle
from typing import Any, Mapping

import numpy as np

from denseav_jax import errors

# The keys a state dict is found nested under, outermost first (Lightning, DINO, DDP).
_NESTING_KEYS = ('state_dict', 'model', 'teacher', 'module', 'model_state_dict')


class PickleRefused(errors.ConversionError):
  """A torch file holding Python objects beyond tensors, read without allow_pickle.

  `advise(how)` rephrases the remedy for the caller's interface (a flag, an argument)."""

  def __init__(self, path: str, detail: str, how: str = 'load it with allow_pickle=True'):
    self.path, self.detail, self.how = path, detail, how
    super().__init__(f'{path} holds Python objects beyond tensors and plain containers '
                     f'({detail}); if you trust the file, {how} to unpickle it fully')

  def advise(self, how: str) -> 'PickleRefused':
    return PickleRefused(self.path, self.detail, how)


def to_numpy(x) -> np.ndarray:
  """A tensor or array as numpy: floating dtypes as float32, integer buffers unchanged."""
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
  """The `pickle_module` torch.load takes: pickle, with the lenient unpickler."""
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
      raise PickleRefused(path, first) from None
  # Full unpickling (trusted files only); classes of uninstalled modules become dicts.
  return torch.load(path, map_location='cpu', weights_only=False, pickle_module=_LenientPickle)


def _hf_files(folder: str) -> list[str]:
  for index in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
    p = os.path.join(folder, index)
    if os.path.exists(p):
      index = _read_json(p)
      if not isinstance(index, dict) or not isinstance(index.get('weight_map'), dict):
        raise errors.ConversionError(f'{p} has no "weight_map" object: is it a Hugging '
                                     'Face sharded-checkpoint index?')
      shards = sorted(set(index['weight_map'].values()))
      return [os.path.join(folder, s) for s in shards]
  for name in ('model.safetensors', 'pytorch_model.bin'):
    p = os.path.join(folder, name)
    if os.path.exists(p):
      return [p]
  raise errors.ConversionError(f'{folder} has no model.safetensors or pytorch_model.bin')


def read(path: str, allow_pickle: bool = False) -> tuple[Any, dict | None]:
  """(raw loaded object or merged state dict, Hugging Face config.json or None).

  A file that cannot be parsed is a ConversionError naming it (never a bare traceback)."""
  if not os.path.exists(path):
    raise errors.ConversionError(f'{path} does not exist')
  if os.path.isdir(path):
    hf_config = None
    cfg_path = os.path.join(path, 'config.json')
    if os.path.exists(cfg_path):
      hf_config = _read_json(cfg_path)
    sd = {}
    for f in _hf_files(path):
      sd.update(read(f, allow_pickle)[0])
    return sd, hf_config
  try:
    if path.endswith('.safetensors'):
      return _read_safetensors(path), None
    return _torch_load(path, allow_pickle), None
  except (errors.ConversionError, errors.MissingExtra):
    raise
  except Exception as e:  # pylint: disable=broad-except
    kind = 'safetensors' if path.endswith('.safetensors') else 'PyTorch (torch.save)'
    raise errors.ConversionError(
        f'{path} could not be read as a {kind} file ({type(e).__name__}: '
        f'{str(e).strip()[:200]}): is it a complete, uncorrupted checkpoint?') from None


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
    raise errors.ConversionError(f'{path} is not valid JSON ({e})') from None


def _is_tensor(x) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype') and not isinstance(x, Mapping)


def unwrap(obj) -> dict[str, Any]:
  """The state dict inside a loaded object (nested under state_dict / model / teacher ...)."""
  for _ in range(4):
    if not isinstance(obj, Mapping):
      break
    if obj and all(_is_tensor(v) for v in obj.values()):
      return dict(obj)
    for key in _NESTING_KEYS:
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
    else:
      break
  if not isinstance(obj, Mapping):
    raise errors.ConversionError(f'expected a state dict, found a {type(obj).__name__}')
  tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
  others = sorted(k for k in obj if k not in tensors)
  if not tensors:
    raise errors.ConversionError('no tensors found (entries: '
                                 + ', '.join(map(str, others[:20])) + ')')
  if others:
    raise errors.ConversionError('the state dict mixes tensors with other entries: '
                                 + ', '.join(map(str, others[:20])))
  return tensors


def numpy_state_dict(obj) -> dict[str, np.ndarray]:
  """`unwrap(obj)` with every tensor as numpy (`to_numpy`)."""
  return {k: to_numpy(v) for k, v in unwrap(obj).items()}


def load_torch_file(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Loads a state dict as float32 numpy arrays (integer buffers keep their dtype).

  `path`: a torch file (.pth/.pt/.bin/.ckpt; torch.load(map_location='cpu',
  weights_only=True) unless allow_pickle), a .safetensors file, or a Hugging Face model
  folder. A state dict nested under 'state_dict' / 'model' / 'teacher' is unwrapped.
  """
  obj, _ = read(path, allow_pickle)
  return numpy_state_dict(obj)
