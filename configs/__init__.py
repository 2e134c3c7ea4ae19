"""The experiment configs, importable as `denseav_jax.configs` (denseav_jax/configs links here,
so an editable and a regular install both carry them).

Every file defines `get_config(arg)` returning an ml_collections.ConfigDict; `arg` (the text
after ':' in `--config configs/FILE.py:ARG`) picks a variant. `configs/default.py` holds
every key with its default and a comment; the other files import it and change a few.
Configs import each other as modules (`from denseav_jax.configs import default`).

`load('configs/synthetic.py:runlocal')` is the one way the project loads a config file
outside the --config flag (sweeps, conversion, tests); `resolve` finds `configs/...` in the
installed package when the current directory has no such file; `variants` parses ARG.
"""

import importlib
import importlib.util
import os

from denseav_jax import errors

DIR = os.path.dirname(os.path.realpath(__file__))
PACKAGE = 'denseav_jax.configs'


def resolve(path: str) -> str:
  """The config file `path` names: as given, else `configs/...` inside the installed package."""
  if os.path.isfile(path):
    return os.path.abspath(path)
  norm = os.path.normpath(path)
  parts = norm.split(os.sep)
  if 'configs' in parts:
    inside = os.path.join(DIR, *parts[len(parts) - parts[::-1].index('configs'):])
    if os.path.isfile(inside):
      return inside
  raise errors.ConfigError(f'config file {path} does not exist (nor in the installed configs, '
                        f'{DIR}): pass e.g. configs/synthetic.py[:VARIANT]')


def module(path: str):
  """The Python module of config file `path` (one of ours: imported by its package name)."""
  real = os.path.realpath(resolve(path))
  if real.startswith(DIR + os.sep):
    rel = os.path.relpath(real, DIR)[:-len('.py')]
    return importlib.import_module(PACKAGE + '.' + rel.replace(os.sep, '.'))
  name = '_denseav_config_' + os.path.basename(real)[:-len('.py')]
  spec = importlib.util.spec_from_file_location(name, real)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load(spec: str):
  """`get_config(ARG)` of 'PATH[:ARG]' (ARG omitted: get_config(None)), unlocked."""
  path, _, arg = spec.partition(':')
  mod = module(path)
  if not hasattr(mod, 'get_config'):
    raise errors.ConfigError(f'{path} defines no get_config(arg)')
  return mod.get_config(arg or None)


def variants(arg: str | None, allowed, where: str) -> list[str]:
  """The comma-separated variant names in `arg`, each checked against `allowed`."""
  names = [v.strip() for v in (arg or '').split(',') if v.strip()]
  for v in names:
    if v not in allowed:
      raise errors.ConfigError(f'{where}: unknown variant {v!r}; use one of '
                            + ', '.join(repr(a) for a in allowed)
                            + ' (several joined by commas)')
  return names

