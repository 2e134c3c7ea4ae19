"""Loading and saving model parameters without an optimizer.

Evaluate, predict and convert read parameters here: from a converted (or exported) model
directory (DIR/params + DIR/config.json) or from a training checkpoint's state
(WORKDIR/checkpoints/STEP/state, of which only the parameters are read). The training
checkpoints themselves (async saves, retention, resume) are denseav_jax.checkpoint.train_checkpoints.
"""

import os
from typing import Any

from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp

from denseav_jax import io as io_lib
from denseav_jax import errors


_CPU_HANDLER_SET = False


def _cpu_arrays_saved_by_one_replica() -> None:
  """On CPU, turn off Orbax's replica-parallel saving.

  With it, every replicated array is cut into one slice per replica by eager jax slice ops
  (one XLA compilation per new slice shape) so that each replica writes a part; on CPU all
  "devices" share one host's memory, so this gains nothing and, measured with the tiny
  config on 8 fake devices, made each save take 4.8 s (3,600 slice dispatches) instead of
  0.5 s (cProfile, runlocal). GPU (Orbax's own default) and TPU keep their defaults.
  """
  global _CPU_HANDLER_SET
  if not _CPU_HANDLER_SET and jax.default_backend() == 'cpu':
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about the override.
    try:
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
      absl_logging.set_verbosity(verbosity)
    _CPU_HANDLER_SET = True


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying `shardings`, for restoring straight onto the mesh."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


# ------------------------------------------------- parameter-only checkpoints (converted)
# A converted (or exported) model is DIR/params (an Orbax PyTree of the parameters) and
# DIR/config.json (the full run config that builds the matching model). Train starts from
# one with config.init_from=DIR; evaluate and predict load it directly.

PARAMS_DIR = 'params'
CONFIG_FILE = 'config.json'


def _flat(tree) -> dict[str, Any]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): x
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def compare_trees(got, want, what: str) -> None:
  """Raises ValueError listing unexpected, missing and mis-shaped leaves of `got`."""
  g, w = _flat(got), _flat(want)
  unknown = sorted(set(g) - set(w))
  missing = sorted(set(w) - set(g))
  shapes = sorted(f'{k}: {tuple(g[k].shape)} (expected {tuple(w[k].shape)})'
                  for k in set(g) & set(w) if tuple(g[k].shape) != tuple(w[k].shape))
  if unknown or missing or shapes:
    lines = [f'{what} does not match the model built from the config:']
    for title, items in (('unknown', unknown), ('missing', missing), ('mis-shaped', shapes)):
      if items:
        lines.append(f'  {len(items)} {title}: ' + ', '.join(items[:40])
                     + (' ...' if len(items) > 40 else ''))
    raise ValueError('\n'.join(lines))


def save_params(directory: str, params, config) -> str:
  """Writes DIR/params and DIR/config.json; refuses to overwrite an existing model."""
  directory = io_lib.absolute(directory)
  path = os.path.join(directory, PARAMS_DIR)
  if io_lib.exists(path):
    raise FileExistsError(f'{path} exists: choose a new --output directory')
  io_lib.makedirs(directory)
  _cpu_arrays_saved_by_one_replica()
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, params)
  ckptr.wait_until_finished()
  save_config(directory, config)
  return directory


def save_config(directory: str, config) -> str:
  """Writes DIR/config.json atomically (creating DIR), so a crash never leaves half a file."""
  io_lib.makedirs(directory)
  path = os.path.join(directory, CONFIG_FILE)
  return io_lib.write_text(path, config.to_json_best_effort(indent=1))


def load_config(directory: str):
  """The run config saved beside converted parameters (ml_collections.ConfigDict)."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from denseav_jax.models import denseav  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, CONFIG_FILE)
  if not io_lib.exists(path):
    raise FileNotFoundError(f'{path} not found: is {directory} the --output of '
                            'python -m denseav_jax.convert?')
  try:
    data = json.loads(io_lib.read_text(path))
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}): re-create it (train writes it; '
                     'convert writes it with --output)') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path} holds a {type(data).__name__}, not a config object')
  model = data.setdefault('model', {})
  if isinstance(model, dict):  # Model keys added since it was written: as they were then.
    for key, value in denseav.ADDED_MODEL_KEYS.items():
      model.setdefault(key, value)
  return ml_collections.ConfigDict(data)


def load_params(directory: str, target, shardings=None):
  """Parameters saved by save_params, checked leaf by leaf against `target`'s tree
  (arrays or ShapeDtypeStructs) and placed with `shardings` (default: target's)."""
  path = os.path.join(io_lib.absolute(directory), PARAMS_DIR)
  if not io_lib.isdir(path):
    raise FileNotFoundError(f'{path} not found: is {directory} the --output of '
                            'python -m denseav_jax.convert?')
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  meta = getattr(meta, 'tree', meta)
  compare_trees(meta, target, f'parameters in {path}')
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, 'sharding', None), target)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
  return ckptr.restore(path, abstract)


def _quiet_metadata(ckptr, path):
  import logging  # pylint: disable=g-import-not-at-top
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns that the item has no step metadata.
  try:
    meta = ckptr.metadata(path)
  finally:
    absl_logger.setLevel(level)
  meta = getattr(meta, 'item_metadata', meta)
  return getattr(meta, 'tree', meta)


def load_train_params(state_dir: str, target):
  """Only the `params` of a training checkpoint's state folder (WORKDIR/checkpoints/STEP/
  state; no optimizer moments are read), checked against `target` and placed with its
  shardings. errors.CheckpointError when the folder holds no train state, ValueError when
  the parameters differ."""
  ckptr = ocp.PyTreeCheckpointer()
  meta = _quiet_metadata(ckptr, state_dir)
  if not isinstance(meta, dict) or 'params' not in meta:
    raise errors.CheckpointError(f'{state_dir} is not a DenseAV train-state checkpoint '
                                 '(no params)')
  compare_trees(meta['params'], target, f'parameters in {state_dir}')
  item = {'params': target}
  restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))
  return restored['params']


def checkpoint_steps(workdir: str) -> list[int]:
  """Completed steps in WORKDIR/checkpoints (Orbax temporaries are skipped)."""
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in io_lib.listdir(ckpt_dir)
                if n.isdigit() and io_lib.isdir(os.path.join(ckpt_dir, n, 'state')))
