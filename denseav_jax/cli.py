"""Shared command-line plumbing: --config/--workdir flags and one-line user errors."""

import os
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/synthetic.py[:ARG]; override fields with '
    '--config.KEY=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, evals).')


class UserError(Exception):
  """A problem the user can fix; printed as one line without a traceback."""


def config_and_workdir(create_workdir: bool):
  config = _CONFIG.value
  if config is None:
    raise UserError('--config is required, e.g. --config configs/synthetic.py')
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
  except (FileNotFoundError, SyntaxError, ImportError, AttributeError) as e:
    print(f'error: could not load --config: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    main_fn(argv)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
