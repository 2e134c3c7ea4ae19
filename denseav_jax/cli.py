"""Shared command-line plumbing: --config/--workdir flags and one-line user errors.

Entry points define their flags when run (`define_flags()` under `if __name__ ==
'__main__'`), never on import, so importing any module adds no global flags. `run_main`
answers --help with the entry point's usage and flags (exit 0), turns flag errors and the
library's errors (errors.DenseAVError, data errors) into one line on stderr (exit 2).
"""

import os
import sys

from absl import flags

from denseav_jax import configs
from denseav_jax import errors
from denseav_jax import io as io_lib


HELP_ARGS = ('-h', '--help', '-help', '--helpshort', '--helpfull', '-?')


def define_flags(*, workdir: bool = True, distributed: bool = False) -> None:
  """--config (with --config.KEY=VALUE overrides), --workdir and, for multi-host entry
  points, the jax.distributed flags (denseav_jax.parallel.distributed). Idempotent."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if 'config' not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        'config', None, 'Config file, e.g. configs/synthetic.py[:ARG]; override fields with '
        '--config.KEY=VALUE.', lock_config=True)
  if workdir and 'workdir' not in flags.FLAGS:
    flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, evals).')
  if distributed:
    from denseav_jax.parallel import distributed as dist  # pylint: disable=g-import-not-at-top
    dist.define_flags()


def load_config_flag(required: bool = True):
  """The --config flag's ConfigDict (its file is loaded lazily: errors surface here)."""
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if config is None:
    if required:
      raise errors.UserError('--config is required, e.g. --config configs/synthetic.py')
    return None
  try:
    config.get('seed')
  except OSError as e:
    detail = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise errors.UserError(f'could not load --config ({detail[-1] if detail else e})') from None
  return config


def config_and_workdir(create_workdir: bool):
  config = load_config_flag()
  return config, workdir_flag(create_workdir)


def workdir_flag(create_workdir: bool) -> str:
  """--workdir, checked (absolute; created when `create_workdir`)."""
  workdir = flags.FLAGS['workdir'].value if 'workdir' in flags.FLAGS else None
  if not workdir:
    raise errors.UserError('--workdir is required')
  if io_lib.is_url(workdir):  # gs://bucket/run: objects need no parent folders.
    if not workdir.startswith('gs://'):
      raise errors.UserError(f'--workdir={workdir}: of URLs only gs:// is supported (or a '
                             'directory on a filesystem every host mounts)')
    workdir = io_lib.absolute(workdir)
    if not create_workdir and not io_lib.isdir(workdir):
      raise errors.UserError(f'--workdir={workdir} does not exist (no objects under it)')
    return workdir
  workdir = os.path.abspath(workdir)
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise errors.UserError(f'the parent of --workdir={workdir} does not exist: create {parent} first')
  if create_workdir:
    os.makedirs(workdir, exist_ok=True)
  elif not os.path.isdir(workdir):
    raise errors.UserError(f'--workdir={workdir} does not exist')
  return workdir


def _print_help(full: bool) -> None:
  main = sys.modules.get('__main__')
  doc = (getattr(main, '__doc__', None) or '').strip()
  if doc:
    print(doc + '\n')
  by_module = flags.FLAGS.flags_by_module_dict()
  lines = []
  for module, module_flags in sorted(by_module.items()):
    if not full and not any(s in module for s in ('denseav_jax', '__main__', 'config_flags')):
      continue
    lines.append(f'{module}:')
    for fl in sorted(module_flags, key=lambda f: f.name):
      default = '' if fl.default is None else f' (default: {fl.default_as_str})'
      lines.append(f'  --{fl.name}: {fl.help}{default}')
  print('Flags:\n' + '\n'.join(lines) if lines else 'This command takes no flags.')
  if not full:
    print('\n--helpfull also lists the flags of the libraries (absl logging, ...).')


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """--config configs/X.py[:ARG] found in the installed package when the current directory
  has no such file (a regular install run from elsewhere); other values are left to absl."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      prefix, value = '--config=', a[len('--config='):]
    elif a == '--config' and i + 1 < len(out):
      prefix, value, i = '', out[i + 1], i + 1
    else:
      continue
    file, sep, arg = value.partition(':')
    if file and not os.path.exists(file):
      try:
        out[i] = prefix + configs.resolve(file) + sep + arg
      except errors.DenseAVError:
        pass  # absl reports the missing file.
  return out


def _unknown_key(e: Exception, argv: list[str]) -> str:
  """The one line for ConfigDict's KeyError / AttributeError on an unknown key: the
  override that named it (with its value) when there is one."""
  key = str(e.args[0] if e.args else e).strip('\'" ')
  for a in argv:
    name = a.split('=', 1)[0]
    if name.startswith('--config.') and name.rsplit('.', 1)[-1] == key:
      return (f'{a}: the config has no key {name[len("--config."):]!r}; see '
              'configs/default.py for the valid keys (a typo?)')
  return (f'unknown config key {key!r} in a --config.KEY=VALUE override or in the config '
          'file: see configs/default.py for the valid keys')


def run_main(main_fn):
  """Parses flags and runs `main_fn(argv)`; --help exits 0, errors exit 2 with one line."""
  sys.argv = _resolve_config_arg(sys.argv)
  args = sys.argv[1:]
  if any(a in HELP_ARGS for a in args):
    _print_help(full='--helpfull' in args)
    sys.exit(0)
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:  # Unknown --config.KEY, bad values, unknown flags.
    msg = str(e).strip().splitlines()
    print(f'error: {msg[-1] if msg else e}', file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:  # ConfigDict's error for an unknown key.
    print(f'error: {_unknown_key(e, sys.argv)}', file=sys.stderr)
    sys.exit(2)
  except (FileNotFoundError, SyntaxError, ImportError) as e:
    print(f'error: could not load --config: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    if 'distributed' in flags.FLAGS:
      from denseav_jax.parallel import distributed as dist  # pylint: disable=g-import-not-at-top
      try:
        dist.initialize_from_flags()
      except ValueError as e:
        raise errors.UserError(str(e)) from None
    main_fn(argv)
  except errors.DenseAVError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
