"""Evaluates WORKDIR's latest checkpoint on the evaluation sets, or a converted model.

  python -m denseav_jax.evaluate --config configs/converted.py:MODEL_DIR --workdir OUT

  python -m denseav_jax.evaluate --config configs/synthetic.py --workdir runs/synth

Writes WORKDIR/eval/STEP/metrics.json (a flat JSON object of floats) and PNG figures.
"""

import json


from denseav_jax import checkpoint
from denseav_jax import cli
from denseav_jax import sharding
from denseav_jax import train
from denseav_jax.evals import evaluator as evaluator_lib
from denseav_jax.models import denseav


def evaluate_workdir(config, workdir: str) -> tuple[int, dict[str, float]]:
  mesh = sharding.make_mesh(config.mesh)
  model = denseav.build_model(config)
  tx = train.make_optimizer(config)
  mgr = checkpoint.manager(workdir)
  step = mgr.latest_step()
  abstract, shardings = train.abstract_state(config, model, tx, mesh)
  if step is None and config.get('init_from'):  # A converted model, e.g. a release one.
    mgr.close()
    params = train.load_init_params(config, abstract.params, shardings.params)
    evaluator = evaluator_lib.Evaluator(config, model, mesh, shardings.params)
    return 0, evaluator.evaluate(params, 0, workdir)
  if step is None:
    raise cli.UserError(f'no checkpoint in {workdir}/checkpoints: train first '
                        '(python -m denseav_jax.train ...), or evaluate a converted model '
                        'with --config configs/converted.py:DIR')
  try:
    state = checkpoint.restore(mgr, abstract, step=step)
  except (ValueError, KeyError) as e:
    raise cli.UserError(f'checkpoint {mgr.directory}/{step} does not match --config '
                        f'(was it trained with another model size?): {e}') from e
  mgr.close()
  evaluator = evaluator_lib.Evaluator(config, model, mesh, shardings.params)
  metrics = evaluator.evaluate(state.params, step, workdir)
  return step, metrics


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  # A converted model (config.init_from) is evaluated into a new workdir.
  config, workdir = cli.config_and_workdir(create_workdir=True)
  step, metrics = evaluate_workdir(config, workdir)
  print(json.dumps({'step': step, **metrics}, indent=1))
  print(f'Wrote {workdir}/eval/{step}/metrics.json and figures.')


if __name__ == '__main__':
  cli.run_main(main)
