"""Runs the evaluators of a config on a checkpoint (docs/evaluation.md).

  python -m denseav_jax.evaluate --config configs/synthetic.py --workdir runs/synth
      [--checkpoint STEP|PATH] [--evals speech_prompted,retrieval]

  python -m denseav_jax.evaluate --checkpoint MODEL_DIR --workdir OUT   # a converted model

--checkpoint picks the parameters: a STEP of WORKDIR/checkpoints (default: the latest), or
a PATH: a converted / exported model (MODEL_DIR/params + MODEL_DIR/config.json, e.g. a
release checkpoint brought over with python -m denseav_jax.convert), one training
checkpoint (RUN/checkpoints/STEP) or another training workdir. Without --checkpoint and
without checkpoints in WORKDIR, config.init_from's converted model is evaluated. --config
defaults to the converted model's config.json (its evaluators included); --evals runs only
the named evaluators of config.evals.

Writes WORKDIR/eval/STEP/metrics.json (STEP 0 for a converted model), the figures beside
it and both to TensorBoard (WORKDIR/tb), and prints the metrics. Runs on any mesh and any number of processes (--distributed).
"""

import json
import os

from absl import flags
import jax

from denseav_jax.checkpoint import model_io
from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax import tb
from denseav_jax.evals import suite as suite_lib
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib


def _checkpoint_dir(workdir: str, step: int | None) -> tuple[str, int]:
  """(state dir, step) of a training workdir's checkpoint `step` (default: the latest)."""
  steps = model_io.checkpoint_steps(workdir)
  if not steps:
    raise errors.UserError(f'no checkpoint in {workdir}/checkpoints: train first '
                        '(python -m denseav_jax.train ...), or evaluate a converted model '
                        'with --checkpoint MODEL_DIR')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise errors.UserError(f'no checkpoint {step} in {workdir}/checkpoints (there: {steps})')
  return os.path.join(workdir, 'checkpoints', str(step), 'state'), step


def resolve(workdir: str, spec: str | None, config):
  """What --checkpoint names -> (kind 'converted' | 'train', directory, step, config)."""
  if spec and spec.isdigit():
    if config is None:
      raise errors.UserError(f'--config is needed with --checkpoint={spec} (a step of '
                          f'{workdir}): pass the config it was trained with')
    state_dir, step = _checkpoint_dir(workdir, int(spec))
    return 'train', state_dir, step, config
  if not spec:
    if model_io.checkpoint_steps(workdir) or config is None or not config.get('init_from'):
      if config is None:
        raise errors.UserError('--config is required unless --checkpoint is a converted model')
      state_dir, step = _checkpoint_dir(workdir, None)
      return 'train', state_dir, step, config
    spec = config.init_from
  path = os.path.abspath(os.path.expanduser(spec))
  if not os.path.isdir(path):
    raise errors.UserError(f'--checkpoint={spec}: no such directory (give a STEP of '
                        f'{workdir}/checkpoints, a converted model directory or a training '
                        'checkpoint)')
  if os.path.isdir(os.path.join(path, model_io.PARAMS_DIR)):
    if config is None:
      try:
        config = model_io.load_config(path)
      except (OSError, ValueError) as e:
        raise errors.UserError(f'--checkpoint={spec}: {e}; or pass --config') from None
    return 'converted', path, 0, config
  if config is None:
    raise errors.UserError(f'--config is needed to evaluate the training checkpoint {spec}: '
                        'pass the config it was trained with')
  if os.path.isdir(os.path.join(path, 'state')):  # RUN/checkpoints/STEP
    name = os.path.basename(path)
    if not name.isdigit():
      raise errors.UserError(f'--checkpoint={spec}: expected RUN/checkpoints/STEP')
    return 'train', os.path.join(path, 'state'), int(name), config
  run = os.path.dirname(path) if os.path.basename(path) == 'checkpoints' else path
  state_dir, step = _checkpoint_dir(run, None)
  return 'train', state_dir, step, config


def evaluate_workdir(config, workdir: str, checkpoint_spec: str | int | None = None,
                     names=None, say=print) -> tuple[int, dict[str, float]]:
  """Evaluates the checkpoint --checkpoint names (see the module docstring) into
  WORKDIR/eval/STEP; returns (STEP, metrics)."""
  spec = None if checkpoint_spec is None else str(checkpoint_spec)
  kind, directory, step, config = resolve(workdir, spec, config)
  mesh = sharding.mesh_from_config(config)
  model = denseav.build_model(config)
  abstract = params_lib.abstract_params(config, model, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  suite = suite_lib.Suite(config, model, mesh, shardings, names)  # Checks config.evals.
  if not suite.names:
    raise errors.UserError('config.evals lists no evaluator: add one (docs/evaluation.md)')
  try:
    if kind == 'converted':
      params = model_io.load_params(directory, abstract, shardings)
    else:
      params = model_io.load_train_params(directory, abstract)
  except errors.DenseAVError:
    raise
  except (ValueError, FileNotFoundError) as e:
    raise errors.CheckpointError(f'{directory} does not match the config (was it made with '
                                 f'another model size? pass the right --config): {e}') from e
  say(f'Evaluating {directory} (step {step}): {", ".join(suite.names)}')
  writer = tb.Writer(workdir) if jax.process_index() == 0 else tb.NullWriter()
  try:
    return step, suite.run(params, step, workdir, writer, names=names, say=say)
  finally:
    writer.close()


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  config = cli.load_config_flag(required=False)
  workdir = cli.workdir_flag(create_workdir=True)
  names = [n.strip() for n in (f.evals or '').split(',') if n.strip()] or None
  step, metrics = evaluate_workdir(config, workdir, f.checkpoint, names)
  if jax.process_index() == 0:
    print(json.dumps({'step': step, **metrics}, indent=1))
    print(f'Wrote {suite_lib.eval_dir(workdir, step)}/metrics.json and figures.')


def define_flags():
  cli.define_flags(workdir=True, distributed=True)
  flags.DEFINE_string('checkpoint', None, 'STEP of WORKDIR/checkpoints (default: the latest), '
                      'or a converted model directory, RUN/checkpoints/STEP or another run.')
  flags.DEFINE_string('evals', None, 'Comma-separated names of config.evals to run '
                      '(default: all).')


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
