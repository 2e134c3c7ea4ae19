"""Each run's training config, built in-process before anything is launched, and the
--config.KEY=VALUE flags that make `python -m denseav_jax.train` build the same one.

A base 'FILE[:ARG]' is found relative to the current directory, else to the repository
root, else among the installed configs (denseav_jax.configs.resolve). Overrides are dotted keys ('sim.agg', 'data.world.train_voices') of fields the base
config has; values are coerced as the train CLI's flag parser would (a list becomes a
tuple, an int a float where the field is a float).
"""

import ast
import copy
import json
import os
from typing import Any, Mapping

import ml_collections

from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.trainer import checks

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
# Where runs start (and relative bases are read): the repository checkout holding this
# package, or the current directory for a regular install (configs/ then resolve inside the
# installed package: denseav_jax.configs.resolve).
ROOT = _CHECKOUT if os.path.isdir(os.path.join(_CHECKOUT, 'launch')) else os.getcwd()


def resolve_base(base: str) -> str:
  """'FILE[:ARG]' as `configs/...` for one of the project's configs (found from any
  directory, editable or regular install), else absolute. UserError if there is no such
  file."""
  if not isinstance(base, str) or not base:
    raise errors.UserError(f'config.base={base!r}: give the training config as FILE[:ARG], '
                           'e.g. configs/synthetic.py:runlocal')
  file, sep, arg = base.partition(':')
  try:
    path = configs.resolve(file if os.path.isabs(file) or os.path.isfile(file)
                           else os.path.join(ROOT, file))
  except errors.ConfigError:
    raise errors.UserError(f'config.base={base}: no file {file} relative to the current '
                           f'directory nor to {ROOT}, nor among the installed configs '
                           f'({configs.DIR})') from None
  real = os.path.realpath(path)
  if real.startswith(configs.DIR + os.sep):
    path = os.path.join('configs', os.path.relpath(real, configs.DIR))
  return path + sep + arg


def load_base(base: str) -> ml_collections.ConfigDict:
  """get_config(ARG) of a resolved base, locked like the --config flag's."""
  file, _, arg = base.partition(':')
  try:
    config = configs.load(configs.resolve(file if os.path.isabs(file)
                                          else os.path.join(ROOT, file))
                          + (':' + arg if arg else ''))
  except errors.DenseAVError as e:
    raise errors.UserError(f'config.base={base}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f'config.base={base}: could not load it ({type(e).__name__}: '
                           f'{e})') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.UserError(f'config.base={base}: get_config returned a '
                           f'{type(config).__name__}, not a ConfigDict')
  config.lock()
  return config


def _coerce(current, value, key: str, where: str):
  """`value` converted to the type of the base's field `current`, as a flag would be."""
  def bad(expected):
    return errors.UserError(f'{where}: config key {key} takes {expected} (the base has '
                         f'{_plain(current)!r}), got {_plain(value)!r}')
  if isinstance(current, bool):
    if not isinstance(value, bool):
      raise bad('True or False')
    return value
  if isinstance(current, int):
    if isinstance(value, bool) or not isinstance(value, int):
      raise bad('an int')
    return value
  if isinstance(current, float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad('a number')
    return float(value)
  if isinstance(current, str):
    if not isinstance(value, str):
      raise bad('a string')
    return value
  if isinstance(current, tuple):
    if not isinstance(value, (list, tuple)):
      raise bad('a tuple or list')
    return _tuples(value)
  if isinstance(current, ml_collections.ConfigDict):
    if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
      raise bad('a dict (it replaces the whole section)')
    return ml_collections.ConfigDict(_tuples(_plain(value)))
  raise errors.UserError(f'{where}: config key {key} holds a {type(current).__name__}, which a '
                      '--config.KEY=VALUE flag cannot set; change the base config instead')


def _plain(value):
  """ConfigDicts as dicts (one-line reprs)."""
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return dict(value) if isinstance(value, Mapping) else value


def _tuples(value):
  """Lists (nested too) as tuples: what the flag's literal parsing gives back."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str) -> dict[str, Any]:
  """Sets each dotted key of `overrides` in `config` and returns the values set (coerced);
  UserError naming `where`, the key and the valid keys at that level for a key the config
  does not have."""
  out = {}
  for key, value in overrides.items():
    parts = key.split('.')
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        level = '.'.join(parts[:i])
        valid = (', '.join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict)
                 else 'none: it is not a section')
        raise errors.UserError(f'{where}: unknown config key {key} (keys of '
                            f'{level or "the config"}: {valid})')
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    coerced = _coerce(current, value, key, where)
    try:
      node[parts[-1]] = coerced
    except (TypeError, ValueError) as e:
      raise errors.UserError(f'{where}: config key {key}={value!r}: {e}') from None
    out[key] = coerced
  return out


def flag_value(value) -> str:
  """VALUE of --config.KEY=VALUE, parsed back by ml_collections' flags to `value`: strings
  raw, bools True/False, numbers, tuples and dicts as Python literals."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, (tuple, dict)):
    text = _literal(value)
    if ast.literal_eval(text) != value:
      raise ValueError(f'{value!r} is not a Python literal')
    return text
  return str(value)


def _literal(value) -> str:
  """A Python literal of `value`, strings in double quotes (easier to quote in a shell)."""
  if isinstance(value, str):
    return json.dumps(value, ensure_ascii=False)
  if isinstance(value, tuple):
    return '(' + ', '.join(map(_literal, value)) + (',' if len(value) == 1 else '') + ')'
  if isinstance(value, dict):
    return '{' + ', '.join(f'{_literal(k)}: {_literal(v)}' for k, v in value.items()) + '}'
  return repr(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]


def build(base_config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
          where: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """A copy of `base_config` with `overrides` applied, and the values set (coerced);
  checks what the sweep needs and every value `checks.check_static` can judge here (the
  mesh's fit to the devices and the data folders are the run's own machine's)."""
  config = copy.deepcopy(base_config)
  coerced = apply_overrides(config, overrides, where)
  if not config.eval_at_end:
    raise errors.UserError(f'{where}: eval_at_end is False: the sweep reads each run\'s final '
                        'evaluation; leave config.eval_at_end True')
  if int(config.num_train_steps) < 1:
    raise errors.UserError(f'{where}: num_train_steps={config.num_train_steps} must be '
                        '>= 1')
  try:  # Every value but those the run's own machine decides (devices, data folders).
    checks.check_static(config, paths=False)
  except errors.DenseAVError as e:
    raise type(e)(f'{where}: {e}') from None
  return config, coerced
