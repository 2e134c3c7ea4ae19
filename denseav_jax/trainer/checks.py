"""Every config value checked before anything compiles.

Each layer checks its own keys: the mesh and partitioning rules (`parallel.sharding`,
`parallel.partitioning`), the model (`models.denseav.check`), the similarity
(`similarity.matrix.check`), the loss (`losses.objective.check`), the data
(`data.pipeline.check`), the evaluators (`evals.registry.check`) and, here, the trainer's
own keys. The functions below run the ones a command needs, right after it has its config:
a bad value is one errors.ConfigError naming the key, the value, why and what to try (one
line through `cli.run_main`), before any program is compiled or any data read
(docs/training.md#bad-values-and-what-they-say).

  check_model(config)          the network: model, similarity, loss type (predict, convert)
  check_evaluation(config)     + mesh and evaluators; returns the mesh (evaluate)
  check_training(config)       + loss, data and the trainer; returns the mesh (train)
  check_static(config, paths)  everything that does not depend on this machine's devices
                               (sweep, for each run before any starts)
"""

import os

import jax

from denseav_jax import errors
from denseav_jax import io as io_lib
from denseav_jax.data import pipeline
from denseav_jax.evals import registry
from denseav_jax.losses import contrastive
from denseav_jax.losses import objective
from denseav_jax.models import denseav
from denseav_jax.parallel import microbatch
from denseav_jax.parallel import partitioning
from denseav_jax.trainer import state as state_lib
from denseav_jax.parallel import sharding
from denseav_jax.similarity import matrix
from denseav_jax.trainer import optim


def check_model(config) -> None:
  """The keys that define the network and its score: model, input, sim, loss.type (the
  rest of config.loss only matters to training: `check_static`)."""
  denseav.check(config)
  matrix.check(config)
  contrastive.check_type(config.loss.type)


def _check_parallel(config) -> None:
  sharding.check_spec(config)
  partitioning.rules_from_config(config.partitioning)
  if config.frozen_dtype not in state_lib.FROZEN_DTYPES:
    raise errors.ConfigError(f'config.frozen_dtype={config.frozen_dtype!r} is not one of '
                             f'{state_lib.FROZEN_DTYPES}')
  if config.frozen_dtype == 'bfloat16' and config.model.dtype != 'bfloat16':
    raise errors.ConfigError("config.frozen_dtype='bfloat16' needs config.model.dtype="
                             "'bfloat16' (frozen weights are then read in bf16 anyway, so "
                             "holding them in bf16 changes no number)")
  if config.opt_state_sharding not in state_lib.OPT_STATE_SHARDINGS:
    raise errors.ConfigError(f'config.opt_state_sharding={config.opt_state_sharding!r} is '
                             f'not one of {state_lib.OPT_STATE_SHARDINGS}')


def _at_least(config, key: str, low, kind=int) -> None:
  value = config[key]
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    ok = ok and float(value).is_integer()
  if not ok or value < low:
    what = 'an integer' if kind is int else 'a number'
    raise errors.ConfigError(f'config.{key}={value!r} must be {what} >= {low}')


def check_trainer(config, paths: bool = True) -> None:
  """The trainer's own keys: steps, schedule, logging, checkpoints, profiling, init_from."""
  for key, low in (('num_train_steps', 0), ('pretrain_steps', 0), ('warmup_steps', 0),
                   ('log_every_steps', 1), ('checkpoint_every_steps', 1)):
    _at_least(config, key, low)
  for key in ('lr', 'pretrain_lr', 'max_seconds'):
    _at_least(config, key, 0, float)
  for key in ('adam_eps', 'grad_clip_per_tensor'):
    if not float(config[key]) > 0:
      raise errors.ConfigError(f'config.{key}={config[key]} must be > 0')
  if config.lr_schedule not in optim.SCHEDULES:
    raise errors.ConfigError(f'config.lr_schedule={config.lr_schedule!r} is not one of '
                             f'{optim.SCHEDULES}')
  if config.lr_schedule == 'sgdr' and not float(config.lr_cycle_length) > 0:
    raise errors.ConfigError(f'config.lr_cycle_length={config.lr_cycle_length} must be > 0 '
                             "with lr_schedule='sgdr' (the first cycle's steps)")
  if config.keep_best_mode not in ('max', 'min'):
    raise errors.ConfigError(f"config.keep_best_mode={config.keep_best_mode!r}: use 'max' "
                             "or 'min'")
  spec = config.profile_steps
  if spec and (isinstance(spec, str) or len(spec) != 2
               or not all(isinstance(v, int) and not isinstance(v, bool) for v in spec)
               or spec[0] < 0 or spec[1] < 1):
    raise errors.ConfigError(f'config.profile_steps={spec!r}: use (first step, count), e.g. '
                             '--config.profile_steps="(100, 5)", or () for no trace')
  if paths and config.init_from and not io_lib.exists(config.init_from):
    raise errors.ConfigError(f'config.init_from={config.init_from} does not exist: give a '
                             'converted model directory (python -m denseav_jax.convert '
                             '--output DIR), or leave it empty')


def check_static(config, paths: bool = True) -> None:
  """Every key that does not depend on this machine's devices (with `paths`: that the
  folders named exist)."""
  _check_parallel(config)
  check_model(config)
  objective.check(config)
  pipeline.check(config, paths)
  evals = registry.check(config, paths=paths)
  check_trainer(config, paths)
  metric = config.keep_best_metric
  if metric and metric.split('/')[0] not in evals:
    raise errors.ConfigError(f'config.keep_best_metric={metric!r} names no evaluator of '
                             f'config.evals ({", ".join(sorted(evals)) or "none"}): write '
                             'NAME/METRIC, e.g. retrieval/a2i_r1, or leave it empty')


def check_evaluation(config, names=None, devices=None):
  """What evaluating needs (`names`: the --evals picked); returns the mesh."""
  _check_parallel(config)
  check_model(config)
  registry.check(config, names)
  return sharding.mesh_from_config(config, devices)


def check_batch(config, mesh) -> None:
  """config.batch_size against the mesh: split evenly over its batch axes, and the
  per-device batch over config.model.tower_microbatches chunks."""
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise errors.ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the {dp} devices of the '
        f'batch axes (data x fsdp) of the mesh {sharding.describe(mesh)}: use a multiple of '
        f'{dp}, or move devices to the tensor axis in config.mesh')
  microbatch.check(config.batch_size, config.model.tower_microbatches, mesh)


def check_training(config, devices=None):
  """Everything a training run reads, against this job's devices and processes; returns
  the mesh."""
  check_static(config)
  mesh = sharding.mesh_from_config(config, devices)
  check_batch(config, mesh)
  if config.batch_size % jax.process_count():
    raise errors.ConfigError(f'config.batch_size={config.batch_size} is not divisible by '
                             f'the {jax.process_count()} processes: use a multiple of '
                             f'{jax.process_count()}')
  return mesh
