"""The command line of `python -m denseav_jax.sweep` (usage in denseav_jax/sweep.py)."""

import os
import sys

from absl import flags
from ml_collections import config_flags

from denseav_jax import errors
from denseav_jax import cli
from denseav_jax.experiments.sweep import runner


def define_flags() -> None:
  cli.define_flags(workdir=True)
  flags.DEFINE_enum('launcher', 'local', ['local', 'tpu', 'slurm'], 'Where the runs train.')
  flags.DEFINE_integer('parallel', None, 'Runs at once (local: default 1; tpu: default the '
                       'number of TPU VMs in TPU; not for slurm).')
  flags.DEFINE_list('only', [], 'Run only the points with these labels.')
  flags.DEFINE_bool('dry_run', False, 'Print each run\'s state and command; launch nothing.')
  flags.DEFINE_bool('fail_fast', False, 'Start no more runs after the first failure.')
  flags.DEFINE_float('progress_every', 30.0, 'Seconds between status lines (0 = none).')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  config = cli.load_config_flag()
  if f.dry_run and f.workdir and not os.path.exists(f.workdir):
    workdir = os.path.abspath(f.workdir)
  else:
    workdir = cli.workdir_flag(create_workdir=True)
  sys.exit(runner.run_sweep(
      config, workdir, config_file=config_flags.get_config_filename(f['config']),
      launcher=f.launcher, parallel=f.parallel, only=f.only, dry_run=f.dry_run,
      fail_fast=f.fail_fast, progress_every=f.progress_every, argv=sys.argv))

