"""One checkpoint file or folder -> (params, config) of a full DenseAV model.

`convert('dino' | 'hubert' | 'denseav', path, config)`. A DINO or HuBERT input gives one
tower; the rest of the model is freshly initialised (`params.init_params` with
`config.seed`) and the tower's shape fields are read from the weights. A released DenseAV
checkpoint gives every parameter, its hyper_parameters and weights the config
(`hparams.infer_config`). Without a config, configs/denseav.py in float32 is the base.
"""

import copy
from typing import Any, Mapping

import jax
import numpy as np

from denseav_jax import configs
from denseav_jax import errors
from denseav_jax import io
from denseav_jax.conversion import denseav
from denseav_jax.conversion import dino
from denseav_jax.conversion import hparams as hparams_lib
from denseav_jax.conversion import hubert
from denseav_jax.conversion import mapping
from denseav_jax.conversion import torch_io
from denseav_jax.models import denseav as denseav_model
from denseav_jax.models import params as params_lib

SOURCES = ('dino', 'hubert', 'denseav')
DEFAULT_CONFIG = 'configs/denseav.py'  # Found in the installed package from any directory.


def default_config():
  """configs/denseav.py computing in float32, the base of a conversion given no config.

  A converted model computes in float32, as the PyTorch release does at inference (the
  training config's bf16 would cost the parity); train from it in bf16 by setting
  config.model.dtype = 'bfloat16'."""
  config = configs.load(DEFAULT_CONFIG)
  config.model.dtype = 'float32'
  return config


def fresh_params(config):
  """params.init_params for `config` (its input sizes shrunk: parameters do not depend on
  them once pos_grid is fixed, and init then runs in seconds)."""
  small = copy.deepcopy(config)
  small.input.image_size = 2 * small.model.image.patch_size
  small.input.audio_samples = small.input.sample_rate
  model = denseav_model.build_model(small)
  params = params_lib.init_params(small, model, jax.random.key(config.seed))
  return jax.tree.map(np.asarray, params)


def describe(target) -> list[str]:
  """One line per parameter, '  path (shape)', sorted by path."""
  return [f'  {k} {tuple(v.shape)}' for k, v in sorted(io.flatten(target).items())]


def _convert_denseav(path: str, config, allow_pickle: bool, log) -> tuple[dict, Any]:
  obj, _ = torch_io.read(path, allow_pickle)
  hparams = None
  if isinstance(obj, Mapping) and 'state_dict' in obj:
    hparams = obj.get('hyper_parameters')
    hparams = dict(hparams) if isinstance(hparams, Mapping) else None
  sd = torch_io.numpy_state_dict(obj)
  log(f'Read {len(sd)} tensors from {path}'
      + (' with hyper_parameters' if hparams else ' (no hyper_parameters: model fields '
         'from the config)'))
  if not hparams:
    # The weights fix the tower shapes but not the similarity settings.
    log(f'WARNING: the similarity settings are not stored in a bare state dict; using '
        f'the config\'s: model.num_heads={config.model.num_heads}, '
        f'sim.agg={config.sim.agg!r}, sim.use_cls={config.sim.use_cls}. For the '
        'released two-head (sound + language) model use configs/denseav.py:twohead.')
  config, notes = hparams_lib.infer_config(sd, config, hparams)
  for n in notes:
    log(f'note: {n}')
  return denseav.model_params(sd, config), config


def _convert_tower(source: str, path: str, config, allow_pickle: bool, log
                   ) -> tuple[dict, Any]:
  obj, hf_config = torch_io.read(path, allow_pickle)
  sd = torch_io.numpy_state_dict(obj)
  if source == 'dino':
    sd, dropped = dino.clean(sd)
    tower, notes = dino.tower_params(sd), []
    fields = dino.tower_fields(tower)
    key, cfg = 'image_model', config.model.image
  else:
    sd, dropped = hubert.clean(sd)
    r = mapping.Reader(sd)
    tower, notes = hubert.map_keys(r, '', fill_masked_spec=True)
    mapping.raise_if_bad('HuBERT state dict', r.unused(), r.missing, r.misshaped)
    fields = hubert.tower_fields(tower, hf_config)
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
  hparams_lib.set_tower(cfg, fields)
  params = fresh_params(config)
  fresh, given = io.flatten(params[key]), io.flatten(tower)
  unknown = sorted(f'{key}/{k}' for k in set(given) - set(fresh))
  missing = sorted(f'{key}/{k}' for k in set(fresh) - set(given)
                   if k.rsplit('/', 1)[-1] not in ('lora_a', 'lora_b'))
  params[key] = io.unflatten({**fresh, **{k: v for k, v in given.items() if k in fresh}})
  g, w = io.flatten(params), io.flatten(denseav.target_params(config))
  mapping.raise_if_bad(f'{source} weights', unknown + sorted(set(g) - set(w)),
                       missing + sorted(set(w) - set(g)), mapping.shape_mismatches(g, w))
  return params, config


def convert(source: str, path: str, config=None, allow_pickle: bool = False,
            log=print) -> tuple[dict, Any]:
  """(params, config) converted from `path`.

  `source`: one of SOURCES. `config`: the base run config (not modified; `default_config()`
  when None). `allow_pickle`: unpickle torch files fully (trusted files only). `log`
  receives the notes (dropped keys, fresh adapters, ignored hyper-parameters). Raises
  errors.ConversionError naming the file or the keys that do not fit."""
  if source not in SOURCES:
    raise errors.ConversionError(f'source must be one of {", ".join(SOURCES)}, got {source!r}')
  config = default_config() if config is None else copy.deepcopy(config)
  if source == 'denseav':
    return _convert_denseav(path, config, allow_pickle, log)
  return _convert_tower(source, path, config, allow_pickle, log)
