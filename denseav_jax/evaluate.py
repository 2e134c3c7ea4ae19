"""Evaluates WORKDIR's latest checkpoint on the evaluation sets.

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
  if step is None:
    raise cli.UserError(f'no checkpoint in {workdir}/checkpoints: train first '
                        '(python -m denseav_jax.train ...)')
  abstract, _ = train.abstract_state(config, model, tx, mesh)
  try:
    state = checkpoint.restore(mgr, abstract, step=step)
  except (ValueError, KeyError) as e:
    raise cli.UserError(f'checkpoint {mgr.directory}/{step} does not match --config '
                        f'(was it trained with another model size?): {e}') from e
  mgr.close()
  metrics = evaluator_lib.Evaluator(config, model, mesh).evaluate(state.params, step, workdir)
  return step, metrics


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  config, workdir = cli.config_and_workdir(create_workdir=False)
  step, metrics = evaluate_workdir(config, workdir)
  print(json.dumps({'step': step, **metrics}, indent=1))
  print(f'Wrote {workdir}/eval/{step}/metrics.json and figures.')


if __name__ == '__main__':
  cli.run_main(main)
