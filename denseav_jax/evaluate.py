"""Runs the evaluators of a config on a checkpoint (docs/evaluation.md).

  python -m denseav_jax.evaluate --config configs/synthetic.py --workdir runs/synth
      [--checkpoint STEP|PATH] [--evals speech_prompted,retrieval]

  python -m denseav_jax.evaluate --checkpoint MODEL_DIR --workdir OUT   # a converted model

--checkpoint picks the parameters: a STEP of WORKDIR/checkpoints (default: the latest), or
a PATH: a converted / exported model (MODEL_DIR/params + MODEL_DIR/config.json, e.g. a
release checkpoint brought over with python -m denseav_jax.convert), one training
checkpoint (RUN/checkpoints/STEP) or another training workdir (checkpoint/resolve.py
resolves all of them, as for predict). Without --checkpoint and without checkpoints in
WORKDIR, config.init_from's converted model is evaluated. --config defaults to the
config.json beside the parameters (a converted model's, or the one training writes into its
workdir; its evaluators included); --evals runs only the named evaluators of config.evals.

Writes WORKDIR/eval/STEP/metrics.json (STEP 0 for a converted model), the figures beside
it and both to TensorBoard (WORKDIR/tb), and prints the metrics. Runs on any mesh and any
number of processes (--distributed).
"""

import json
import os

from absl import flags
import jax

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax import io as io_lib
from denseav_jax import tb
from denseav_jax.checkpoint import model_io
from denseav_jax.checkpoint import resolve as resolve_lib
from denseav_jax.evals import suite as suite_lib
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.trainer import checks


def resolve(workdir: str, spec: str | None, config) -> resolve_lib.Checkpoint:
  """What --checkpoint names (module docstring) -> the checkpoint to evaluate and its
  config. Resolver errors come back naming the flag (or config key) to change."""
  if spec and spec.isdigit():
    source, path, step = '--checkpoint', workdir, int(spec)
    if config is None and not io_lib.exists(os.path.join(workdir, model_io.CONFIG_FILE)):
      raise errors.UserError(f'--config is needed with --checkpoint={spec} (a step of '
                             f'{workdir}, which has no {model_io.CONFIG_FILE}): pass the config '
                             'it was trained with')
  elif spec:
    source, path, step = '--checkpoint', spec, None
  elif model_io.checkpoint_steps(workdir) or config is None or not config.init_from:
    source, path, step = '--workdir', workdir, None
  else:
    source, path, step = 'config.init_from', config.init_from, None
  try:
    return resolve_lib.resolve(path, step, config)
  except resolve_lib.ResolveError as e:
    if e.argument == 'config':
      raise errors.UserError(f'--config is needed: {e}') from None
    hint = ('; or evaluate a converted model with --checkpoint MODEL_DIR'
            if source == '--workdir' else '')
    raise errors.UserError(f'{source}: {e}{hint}') from None


def evaluate_workdir(config, workdir: str, checkpoint_spec: str | int | None = None,
                     names=None, say=print) -> tuple[int, dict[str, float]]:
  """Evaluates the checkpoint --checkpoint names (see the module docstring) into
  WORKDIR/eval/STEP; returns (STEP, metrics)."""
  spec = None if checkpoint_spec is None else str(checkpoint_spec)
  ckpt = resolve(workdir, spec, config)
  config = ckpt.config
  mesh = checks.check_evaluation(config, names)  # Every value, before anything compiles.
  model = denseav.build_model(config)
  abstract = params_lib.abstract_params(config, model, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  suite = suite_lib.Suite(config, model, mesh, shardings, names)  # Checks config.evals.
  if not suite.names:
    raise errors.UserError('config.evals lists no evaluator: add one (docs/evaluation.md)')
  params = resolve_lib.load_params(ckpt, abstract, shardings)
  step = ckpt.step
  say(f'Evaluating {ckpt.directory} (step {step}): {", ".join(suite.names)}')
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
  names = [n.strip() for n in (f.evals or '').split(',') if n.strip()] or None
  if config is not None:  # A bad value is reported before anything is created or read.
    checks.check_evaluation(config, names)
  workdir = cli.workdir_flag(create_workdir=True)
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
