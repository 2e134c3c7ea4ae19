"""Evaluates WORKDIR's latest checkpoint on the evaluation sets, or a converted model.

  python -m denseav_jax.evaluate --config configs/converted.py:MODEL_DIR --workdir OUT

  python -m denseav_jax.evaluate --config configs/synthetic.py --workdir runs/synth

Writes WORKDIR/eval/STEP/metrics.json (a flat JSON object of floats) and PNG figures.
"""

import json

import jax

from denseav_jax import checkpoint
from denseav_jax import cli
from denseav_jax import errors
from denseav_jax import sharding
from denseav_jax.evals import evaluator as evaluator_lib
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib


def evaluate_workdir(config, workdir: str, step: int | None = None
                     ) -> tuple[int, dict[str, float]]:
  """Evaluates WORKDIR's checkpoint `step` (default: the latest; only the parameters are
  read), or config.init_from's converted model when WORKDIR has no checkpoint."""
  mesh = sharding.mesh_from_config(config)
  model = denseav.build_model(config)
  abstract = params_lib.abstract_params(config, model, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  steps = checkpoint.checkpoint_steps(workdir)
  evaluator = evaluator_lib.Evaluator(config, model, mesh, shardings)
  if not steps and config.get('init_from'):  # A converted model, e.g. a release one.
    try:
      params = checkpoint.load_params(config.init_from, abstract, shardings)
    except (ValueError, FileNotFoundError) as e:
      raise errors.CheckpointError(f'config.init_from: {e}') from e
    return 0, evaluator.evaluate(params, 0, workdir)
  if not steps:
    raise cli.UserError(f'no checkpoint in {workdir}/checkpoints: train first '
                        '(python -m denseav_jax.train ...), or evaluate a converted model '
                        'with --config configs/converted.py:DIR')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise cli.UserError(f'no checkpoint {step} in {workdir}/checkpoints (there: {steps})')
  state_dir = f'{workdir}/checkpoints/{step}/state'
  try:
    params = checkpoint.load_train_params(state_dir, abstract)
  except ValueError as e:
    raise cli.UserError(f'checkpoint {workdir}/checkpoints/{step} does not match --config '
                        f'(was it trained with another model size?): {e}') from e
  return step, evaluator.evaluate(params, step, workdir)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  # A converted model (config.init_from) is evaluated into a new workdir.
  config, workdir = cli.config_and_workdir(create_workdir=True)
  step, metrics = evaluate_workdir(config, workdir)
  print(json.dumps({'step': step, **metrics}, indent=1))
  print(f'Wrote {workdir}/eval/{step}/metrics.json and figures.')


if __name__ == '__main__':
  cli.define_flags(workdir=True, distributed=True)
  cli.run_main(main)
