"""A released DenseAV state dict -> the full model's params (`params.init_params`' tree).

The release layout: the image tower under `image_model.model.` (with peft LoRA:
`image_model.base_model.model.model.`, `...qkv.base_layer.weight`,
`qkv.lora_A.<adapter>.weight`, `qkv.lora_B.<adapter>.weight`), the audio tower under
`audio_model.model.` (LoRA on q_proj, k_proj, v_proj alike), the aligners, SimPool
(`sim_agg.pool.*`), the learned audio CLS and the calibrator (`sim_cal.w`, and `sim_cal.b`
for losses other than nce). DeepSpeed's '_forward_module.' and DDP's 'module.' wrappers
are removed first.
"""

from typing import Any, Mapping

import numpy as np

from denseav_jax import io
from denseav_jax.conversion import dino
from denseav_jax.conversion import hubert
from denseav_jax.conversion import mapping
from denseav_jax.models import denseav as denseav_model
from denseav_jax.models import params as params_lib

IMAGE_PREFIXES = ('image_model.base_model.model.model.', 'image_model.model.')
AUDIO_PREFIXES = ('audio_model.base_model.model.model.', 'audio_model.model.')
# Our module -> its release prefix, for the modules whose keys follow our tree.
_TARGET_DRIVEN = (('image_aligner', 'image_aligner.'), ('audio_aligner', 'audio_aligner.'),
                  ('simpool', 'sim_agg.pool.'))


def target_params(config) -> dict:
  """The ShapeDtypeStructs a conversion for `config` must fill (no compute)."""
  return params_lib.abstract_params(config, denseav_model.build_model(config))


def strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Removes DeepSpeed's '_forward_module.' and DDP's 'module.' wrappers."""
  for pre in ('_forward_module.', 'module.'):
    if sd and all(k.startswith(pre) for k in sd):
      sd = {k[len(pre):]: v for k, v in sd.items()}
  return dict(sd)


def tower_prefix(r: mapping.Reader, options: tuple[str, ...]) -> str:
  """The first of `options` (with / without peft) that some key starts with."""
  for p in options:
    if any(k.startswith(p) for k in r.sd):
      return p
  return options[-1]


def _scalar(r: mapping.Reader, key: str, dst: str, out: dict) -> None:
  x = r.get(key, dst=dst)
  if x is not None:
    if x.size != 1:
      r.misshaped.append(f'{key}: {x.shape} (expected one value)')
    else:
      out[dst] = np.float32(x.reshape(()))


def model_params(sd: Mapping[str, Any], config, *, target=None) -> dict:
  """Full DenseAV params (the tree of `params.init_params(config, ...)`) from a state dict in
  the release layout. `config` must describe the same model (see `hparams.infer_config`).
  Raises errors.ConversionError listing unknown, missing and mis-shaped keys. `target`: the
  tree of `target_params(config)` if already at hand."""
  r = mapping.Reader(strip_wrappers(sd))
  target = target_params(config) if target is None else target
  got: dict = {}
  image_p, audio_p = tower_prefix(r, IMAGE_PREFIXES), tower_prefix(r, AUDIO_PREFIXES)
  got['image_model'] = dino.map_keys(r, image_p)
  origin = {f'image_model/{k}': v for k, v in r.origin.items()}
  r.origin = {}
  got['audio_model'], _ = hubert.map_keys(r, audio_p, fill_masked_spec=False)
  origin.update({f'audio_model/{k}': v for k, v in r.origin.items()})
  r.origin = origin
  for name, src in _TARGET_DRIVEN:
    if name in target:
      mapping.target_driven(r, src, name, target[name], got)
  if 'audio_cls' in target:
    mapping.put(got, 'audio_cls', r.get('audio_cls', dst='audio_cls'))
  _scalar(r, 'sim_cal.w', 'sim_cal_w', got)
  if 'sim_cal_b' in target or r.has('sim_cal.b'):
    _scalar(r, 'sim_cal.b', 'sim_cal_b', got)
  r.origin.setdefault('sim_cal_w', 'sim_cal.w')
  r.origin.setdefault('sim_cal_b', 'sim_cal.b')

  g, w = io.flatten(got), io.flatten(target)
  name = lambda k: f'{r.origin[k]} (-> {k})' if k in r.origin else k
  unknown = r.unused() + sorted(name(k) for k in set(g) - set(w))
  if 'sim_cal.b' in unknown or 'sim_cal.b (-> sim_cal_b)' in unknown:
    unknown.append('(sim_cal.b exists only for loss types other than nce: set '
                   'config.loss.type)')
  # A parameter whose source key was looked up is listed under that key already.
  missing = sorted(set(r.missing)) + sorted(k for k in set(w) - set(g) if k not in r.origin)
  misshaped = r.misshaped + mapping.shape_mismatches(g, w, name)
  mapping.raise_if_bad('DenseAV state dict', unknown, missing, misshaped)
  return io.unflatten({k: np.asarray(v, np.float32) for k, v in g.items()})
