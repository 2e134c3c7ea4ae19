"""Compiles a config's train step for a TPU slice ahead of time, on any CPU machine, and
prints its plan per chip (docs/pods.md).

  python -m denseav_jax.compile --config configs/denseav_language.py[:VARIANT]
      --topology v5e-256 [--num_slices N] [--batch_size B] [--phase 1|2|all]
      [--mfu 0.4] [--hbm_gib G] [--evals] [--find_max_batch [--start_batch B]]
      [--hand_count] [--out plan.json]
      [--config.KEY=VALUE ...]

Needs libtpu (`pip install -e ".[tpu]"`, i.e. jax[tpu]): the TPU compiler runs here, on
compile-only devices of the named slice; no TPU is used. --topology as users write it
(v4-32, v5e-256, v5p-128, v6e-64) or as a chip grid (v5p:4x4x4, v5e:2x2). The config's
own mesh (config.mesh, and config.mesh_dcn across --num_slices slices; when that is empty,
the data axis spans the slices) is built over the slice's chips, and each phase's real
train step is lowered and compiled with abstract inputs.

Prints per phase and per chip: parameters, optimizer state, batch, temporaries, code and
their total against the chip's HBM; FLOPs per step and per example; bytes accessed; the
roofline step time and the phase's schedule at --mfu. A step that does not fit ends with
one line (exit 2): what it needs, what the chip has, and the levers to try.
--hbm_gib plans within less than the chip's HBM (a margin). --evals compiles the sharded
evaluation steps too (both towers at the evaluation batch, each retrieval evaluator's score
matrix). --hand_count prints, without compiling, the hand count of each phase's FLOPs and
the step and schedule times it implies on the slice. --find_max_batch finds, per phase, the
largest global batch that fits (a multiple of the data-parallel size; with the towers over
chunks, of whole chunks per device) by bisection on compiles, doubling from --start_batch.
--out writes the figures as JSON.

The full-size models take minutes per compile on a small machine (docs/pods.md).
"""

import os

# Before jax starts: this machine's backend is the CPU (the TPU is only compiled for), and
# there is no TPU metadata server to ask.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')

from absl import flags  # pylint: disable=wrong-import-position

from denseav_jax import cli  # pylint: disable=wrong-import-position
from denseav_jax import errors  # pylint: disable=wrong-import-position
from denseav_jax import io as io_lib  # pylint: disable=wrong-import-position
from denseav_jax.trainer import max_batch  # pylint: disable=wrong-import-position
from denseav_jax.trainer import plan as plan_lib  # pylint: disable=wrong-import-position
from denseav_jax.trainer import plan_evals  # pylint: disable=wrong-import-position


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  config = cli.load_config_flag()
  if not f.topology:
    raise errors.UserError('--topology is required, e.g. --topology v5e-256 or v5p:4x4x4')
  if f.num_slices < 1:
    raise errors.UserError(f'--num_slices={f.num_slices} must be >= 1')
  if not 0 < f.mfu <= 1:
    raise errors.UserError(f'--mfu={f.mfu} must lie in (0, 1]')
  if f.batch_size is not None:
    if f.batch_size < 1:
      raise errors.UserError(f'--batch_size={f.batch_size} must be >= 1')
    config = plan_lib.with_batch(config, f.batch_size)
  if f.hand_count:
    print(plan_lib.format_hand_count(plan_lib.hand_count_plan(
        config, f.topology, f.num_slices, f.phase, f.mfu)), flush=True)
    return
  if f.find_max_batch:
    result = max_batch.find_max_batch(config, f.topology, f.num_slices, f.phase, f.mfu,
                                      start_batch=f.start_batch or 0, hbm_gib=f.hbm_gib)
  else:
    result = plan_lib.plan(config, f.topology, f.num_slices, f.phase, f.mfu,
                           hbm_gib=f.hbm_gib)
  text = plan_lib.format_plan(result)
  if f.evals:
    result['evals'] = plan_evals.plan_evals(config, f.topology, f.num_slices)
    text += '\n' + plan_evals.format_evals(result['evals'])
  print(text, flush=True)
  if f.out:
    io_lib.write_json(f.out, result)
    print(f'Wrote {f.out}')


def define_flags():
  cli.define_flags(workdir=False)
  flags.DEFINE_string('topology', None, 'TPU slice: v4-32, v5e-256, v5p-128, v6e-64, or a '
                      'chip grid such as v5p:4x4x4')
  flags.DEFINE_integer('num_slices', 1, 'slices of --topology (multi-slice over the '
                       'data-centre network)')
  flags.DEFINE_integer('batch_size', None, 'global batch (default: the config\'s)')
  flags.DEFINE_enum('phase', 'all', ['1', '2', 'all'], 'the training phase(s) to compile')
  flags.DEFINE_float('mfu', 0.4, 'model-FLOPs utilisation assumed for the step and schedule '
                     'times')
  flags.DEFINE_boolean('find_max_batch', False, 'find the largest global batch that fits, '
                       'per phase, by bisection on compiles')
  flags.DEFINE_integer('start_batch', None, '--find_max_batch: the global batch to start '
                       'doubling from (default: one example per data-parallel device); a '
                       'batch thought to fit saves the compiles below it')
  flags.DEFINE_float('hbm_gib', None, 'plan within this many GiB per chip instead of the '
                     'chip\'s whole HBM (a margin, or room kept for something else): a step '
                     'that needs more does not fit')
  flags.DEFINE_string('out', None, 'JSON file for the plan')
  flags.DEFINE_boolean('evals', False, 'also compile the sharded evaluation steps: both '
                       'towers at eval_batch_size, each retrieval evaluator\'s score matrix')
  flags.DEFINE_boolean('hand_count', False, 'no compile: the hand count of each phase\'s '
                       'FLOPs (towers linear, similarity quadratic in the batch) and the step '
                       'and schedule times at --mfu on the slice; memory needs a compile')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
