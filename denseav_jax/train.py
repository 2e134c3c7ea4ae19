r"""Trains DenseAV on a device mesh; resumes from WORKDIR's latest checkpoint.

  python -m denseav_jax.train --config configs/synthetic.py --workdir runs/synth \
      [--config.batch_size=64 ...] [--distributed [--cluster=slurm|tpu|explicit ...]]

The trainer itself is the denseav_jax.trainer package (state, optim, step, loop,
preemption, progress), with its checkpoints in denseav_jax.checkpoint (train_checkpoints)
and the mesh and multi-host start-up in denseav_jax.parallel (sharding, distributed);
docs/training.md describes the recipe, sharding, checkpoints, preemption and multi-host
launch.
"""

from denseav_jax import errors
from denseav_jax import cli
from denseav_jax.trainer import checks
from denseav_jax.trainer.loop import train_and_evaluate  # pylint: disable=unused-import


def define_flags():
  cli.define_flags(workdir=True, distributed=True)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.load_config_flag()
  checks.check_training(config)  # Before the workdir is created (and again in the loop).
  train_and_evaluate(config, cli.workdir_flag(create_workdir=True))


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
