"""Shared command-line plumbing: --config/--workdir flags and one-line user errors."""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from denseav_jax.data import errors as data_errors

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/synthetic.py[:ARG]; override fields with '
    '--config.KEY=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, evals).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-process runs). On TPU '
    'pods and SLURM the arguments below are detected; elsewhere pass them.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index.')


app.define_help_flags()  # --help / --helpfull for every CLI (flags parsed without app.run).


class UserError(Exception):
  """A problem the user can fix; printed as one line without a traceback."""


def maybe_initialize_distributed():
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def config_and_workdir(create_workdir: bool):
  config = _CONFIG.value
  if config is None:
    raise UserError('--config is required, e.g. --config configs/synthetic.py')
  try:
    config.get('seed')  # The config file is loaded lazily: surface its errors here.
  except OSError as e:
    detail = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise UserError(f'could not load --config ({detail[-1] if detail else e})') from None
  workdir = _WORKDIR.value
  if not workdir:
    raise UserError('--workdir is required')
  workdir = os.path.abspath(workdir)
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise UserError(f'the parent of --workdir={workdir} does not exist: create {parent} first')
  if create_workdir:
    os.makedirs(workdir, exist_ok=True)
  elif not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} does not exist')
  return config, workdir


def run_main(main_fn):
  """Parses flags and runs `main_fn(argv)`; flag and user errors exit with one line."""
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:  # Unknown --config.KEY, bad values, unknown flags.
    msg = str(e).strip().splitlines()
    print(f'error: {msg[-1] if msg else e}', file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:  # ConfigDict's error for an unknown key.
    print(f'error: unknown config key {e} in a --config.KEY=VALUE override (or in the '
          'config file): see configs/default.py for the valid keys', file=sys.stderr)
    sys.exit(2)
  except (FileNotFoundError, SyntaxError, ImportError) as e:
    print(f'error: could not load --config: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    maybe_initialize_distributed()
    main_fn(argv)
  except (UserError, data_errors.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
