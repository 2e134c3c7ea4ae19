r"""Runs an ablation sweep: every point of a sweep config at every seed, one training run
each, then a table of their final evaluations.

  python -m denseav_jax.sweep --config configs/ablations/NAME.py[:ARG] --workdir DIR \
      [--launcher local|tpu|slurm] [--parallel N] [--only LABEL1,LABEL2] [--dry_run] \
      [--fail_fast] [--progress_every 30] [--config.seeds=(0,1) ...]

Every run's training config is built and checked before anything starts (the base config
with the sweep's overrides, the point's, then config.seed). Layout: DIR/sweep.json (the
sweep), DIR/LABEL_seedN/ (a run's workdir: point.json with its exact command, train.log,
checkpoints, eval/STEP/metrics.json), DIR/results.json and DIR/results.md at the end.

Resuming: run the same command again. A run is finished once it has its final evaluation,
eval/<num_train_steps>/metrics.json; finished runs are skipped, the others restart and the
trainer resumes from their latest checkpoint. Changing a point's overrides in an existing
DIR is refused (use a new DIR or rename the point); new points and seeds are fine.

Launchers:
  local  (default) --parallel N training processes at once on this machine (with N > 1
         each gets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/N unless that is set).
  tpu    TPU=vm1,vm2 ZONE=Z [PROJECT=P]: each running run gets a TPU VM of its own,
         through launch/tpu_pod.sh (--parallel: up to the number of VMs, default all).
  slurm  one `sbatch launch/slurm.sbatch RUN ...` per unfinished run (SBATCH_FLAGS adds
         sbatch options); returns at once. A run whose job is still in squeue is not
         resubmitted; run the command again later to resubmit and to collect results.

Ctrl-C / SIGTERM: the running trainings save a checkpoint and stop (a second signal kills
them); exit 130 / 143. Exit 0 when every run finished, 1 when some failed or stopped.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from denseav_jax import cli
from denseav_jax import errors
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


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
