"""Which parameters a path names, and reading them: one resolver for predict and evaluate.

A path is one of

  a converted / exported model   DIR/params + DIR/config.json (python -m denseav_jax.convert,
                                 model_io.save_params); step 0
  a training workdir             DIR/checkpoints/STEP/state (the latest STEP unless a step
                                 is asked for); also its DIR/checkpoints folder
  one training checkpoint        RUN/checkpoints/STEP

`resolve` says which (a `Checkpoint`: kind, the folder to read, step, config) and
`load_params` reads only the parameters from it, checked against the model the config
builds. The config is the one given (it overrides a config.json), else the config.json
beside the parameters: a converted model's own, or the one training writes into its workdir
(or a step folder's).

Errors name the path, what is wrong and what to do, in terms of paths and arguments:
`ResolveError` (a errors.UserError) says with `argument` whether the path, the step or the
config is to change, so a command line can name its own flag; parameters that cannot be
read or do not fit the config are errors.CheckpointError.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from denseav_jax import errors
from denseav_jax import io as io_lib
from denseav_jax.checkpoint import model_io

CONVERTED = 'converted'
TRAIN = 'train'
ARGUMENTS = ('path', 'step', 'config')
_LAYOUTS = (f'a converted model folder (DIR/{model_io.PARAMS_DIR} + DIR/{model_io.CONFIG_FILE}) '
            'or a training workdir (DIR/checkpoints/STEP)')


class ResolveError(errors.UserError):
  """A path, step or config that names no usable checkpoint; `argument` says which."""

  def __init__(self, message: str, argument: str):
    if argument not in ARGUMENTS:
      raise ValueError(f'argument={argument!r} is not one of {ARGUMENTS}')
    super().__init__(message)
    self.argument = argument


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What a path names: kind (CONVERTED or TRAIN), directory (the model folder, or
  RUN/checkpoints/STEP/state), step (0 for a converted model) and the config to build the
  model from."""
  kind: str
  directory: str
  step: int
  config: Any


def _read_config(directory: str):
  try:
    return model_io.load_config(directory)
  except (OSError, ValueError) as e:
    raise ResolveError(f'{e}; or pass the config explicitly', 'config') from None


def resolve(path: str, step: int | None = None, config=None) -> Checkpoint:
  """The checkpoint `path` names (module docstring); `step` picks a training step.

  Raises ResolveError when the path holds no checkpoint, the step is not there (or is
  asked of a converted model or of another step's folder), or no config is given and
  none is beside the parameters.
  """
  d = io_lib.absolute(os.path.expanduser(str(path)))
  if not io_lib.isdir(d):
    raise ResolveError(f'{path}: no such directory; give {_LAYOUTS}', 'path')
  if io_lib.isdir(os.path.join(d, model_io.PARAMS_DIR)):
    if step is not None:
      raise ResolveError(f'{path} is a converted model, which has no training steps (asked '
                         f'for step {step}): leave the step out', 'step')
    if config is None:
      if not io_lib.exists(os.path.join(d, model_io.CONFIG_FILE)):
        raise ResolveError(f'{path} has {model_io.PARAMS_DIR}/ but no {model_io.CONFIG_FILE}: '
                           'pass the config the parameters were converted with', 'config')
      config = _read_config(d)
    return Checkpoint(CONVERTED, d, 0, config)

  if io_lib.isdir(os.path.join(d, 'state')):  # One step's folder: RUN/checkpoints/STEP.
    name = os.path.basename(d)
    if not name.isdigit():
      raise ResolveError(f'{path} holds a state/ folder but is not named by its step: '
                         'give RUN/checkpoints/STEP or the run folder RUN', 'path')
    if step is not None and step != int(name):
      raise ResolveError(f'{path} is the checkpoint of step {name}, not {step}: leave the '
                         'step out, or give the run folder to pick a step', 'step')
    step, workdir = int(name), os.path.dirname(os.path.dirname(d))
  else:
    workdir = os.path.dirname(d) if os.path.basename(d) == 'checkpoints' else d
    steps = model_io.checkpoint_steps(workdir)
    if not steps:
      raise ResolveError(
          f'no checkpoint in {path}: it holds neither a converted model '
          f'({model_io.PARAMS_DIR}/ + {model_io.CONFIG_FILE}) nor training checkpoints '
          '(checkpoints/STEP/); train first (python -m denseav_jax.train), or convert a '
          'released model (python -m denseav_jax.convert)', 'path')
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ResolveError(f'no checkpoint {step} in {os.path.join(workdir, "checkpoints")} '
                         f'(steps there: {steps})', 'step')
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  if config is None:
    for candidate in (workdir, step_dir):
      if io_lib.exists(os.path.join(candidate, model_io.CONFIG_FILE)):
        config = _read_config(candidate)
        break
    else:
      raise ResolveError(f'{path} is a training checkpoint without a {model_io.CONFIG_FILE} '
                         'beside it (training writes one into its workdir): pass the config '
                         'it was trained with', 'config')
  return Checkpoint(TRAIN, os.path.join(step_dir, 'state'), int(step), config)


def _one_line(text: str) -> str:
  return '; '.join(l.strip() for l in str(text).splitlines() if l.strip())


def load_params(ckpt: Checkpoint, abstract, shardings=None):
  """The parameters of `ckpt`, checked leaf by leaf against `abstract` (the model the
  config builds) and placed with `shardings` (default: abstract's).

  errors.CheckpointError (one line) when they do not fit, or cannot be read.
  """
  try:
    if ckpt.kind == CONVERTED:
      return model_io.load_params(ckpt.directory, abstract, shardings)
    return model_io.load_train_params(ckpt.directory, abstract)
  except errors.DenseAVError:
    raise
  except ValueError as e:
    raise errors.CheckpointError(
        f'{ckpt.directory} does not match the model the config builds ({_one_line(e)}): '
        'use the config it was trained / converted with') from None
  except Exception as e:  # pylint: disable=broad-except
    # Orbax raises assorted types for unreadable or truncated checkpoint files.
    raise errors.CheckpointError(
        f'could not read the parameters in {ckpt.directory} ({type(e).__name__}: '
        f'{_one_line(e)[:300]}): is the checkpoint complete (not still being written, not '
        'truncated)?') from None
