r"""Converts PyTorch weights (DINO, Hugging Face HuBERT, released DenseAV) to our checkpoints.

  python -m denseav_jax.convert --source {dino,hubert,denseav} --input PATH --output DIR \
      [--config configs/denseav.py[:VARIANT]] [--config.KEY=VALUE ...] [--allow_pickle]

Writes DIR/params (Orbax) and DIR/config.json (`model_io.save_params`); train with
`--config.init_from=DIR`, or load with `model_io.load_config` / `model_io.load_params`.
The output is always a full DenseAV model (configs/denseav.py in float32 unless --config
says otherwise):

  dino     a DINO / timm-layout ViT state dict (.pth/.pt/.bin/.safetensors; optionally nested
           under 'model' / 'teacher' / 'state_dict', optional 'module.' / 'backbone.'
           prefixes; `head.*` is reported, not converted). The image tower comes from it,
           its shape fields from the weights; the rest is freshly initialised (config.seed).
  hubert   Hugging Face HuBERT weights: a model folder (config.json + model.safetensors or
           pytorch_model.bin, sharded *.index.json too) or one state-dict file, with or
           without HubertForCTC's 'hubert.' prefix (`lm_head.*` reported, not converted).
           The audio tower comes from it, its shape fields from the weights and config.json;
           the rest is freshly initialised.
  denseav  a released DenseAV Lightning checkpoint (.ckpt: 'state_dict' and
           'hyper_parameters') or a bare state dict in the release layout, with or without
           peft LoRA. Its hyper_parameters set the model, similarity and loss fields of the
           config (unsupported values are an error); LoRA ranks and tower shapes come from
           the weights.

Every input key must be used and every parameter filled with the right shape; otherwise the
error lists the unknown, missing and mis-shaped keys. The library is denseav_jax/conversion/
(readers, key mappings, hyper-parameters, the driver); docs/convert.md has the details.
"""

import os

from absl import flags
import numpy as np

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax import io
from denseav_jax.checkpoint import model_io
from denseav_jax.conversion import convert as convert_lib
from denseav_jax.conversion import denseav
from denseav_jax.conversion import torch_io
from denseav_jax.trainer import checks


def define_flags():
  """Registers this CLI's flags (idempotent); only the command line calls it."""
  if 'source' in flags.FLAGS:
    return
  cli.define_flags(workdir=False)
  flags.DEFINE_enum('source', None, list(convert_lib.SOURCES), 'What --input holds.')
  flags.DEFINE_string('input', None, 'Checkpoint file or Hugging Face model folder.')
  flags.DEFINE_string('output', None, 'Output directory (DIR/params + DIR/config.json).')
  flags.DEFINE_bool('allow_pickle', False, 'Unpickle --input fully if it holds Python objects '
                    'beyond tensors (trusted files only).')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.source:
    raise errors.UserError(f'--source is required ({", ".join(convert_lib.SOURCES)})')
  if not f.input:
    raise errors.UserError('--input is required')
  if not f.output:
    raise errors.UserError('--output is required')
  if not os.path.exists(f.input):
    raise errors.UserError(f'--input {f.input} does not exist')
  params_dir = os.path.join(f.output, model_io.PARAMS_DIR)
  if os.path.exists(params_dir):
    raise errors.UserError(f'{params_dir} exists: choose a new --output directory')
  config = cli.load_config_flag(required=False)  # None: the conversion's default.
  if config is not None:  # A bad value is reported before the weights are read.
    checks.check_model(config)
  try:
    params, config = convert_lib.convert(f.source, f.input, config,
                                         allow_pickle=f.allow_pickle)
  except torch_io.PickleRefused as e:
    raise e.advise('pass --allow_pickle') from None
  checks.check_model(config)  # With the fields the weights set.
  target = denseav.target_params(config)
  print('Parameter tree (jax.eval_shape of params.init_params for the converted config):')
  print('\n'.join(convert_lib.describe(target)))
  n = sum(int(np.prod(x.shape)) for x in io.flatten(target).values())
  print(f'{n:,} parameters')
  out = model_io.save_params(f.output, params, config)
  print(f'Wrote {out}/{model_io.PARAMS_DIR} and {out}/{model_io.CONFIG_FILE}')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
