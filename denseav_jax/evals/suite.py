"""The evaluators of a config, run together on one set of parameters (docs/evaluation.md).

  suite = Suite(config, model, mesh, param_shardings)
  metrics = suite.run(params, step, workdir, writer)   # every evaluator
  suite.due(step, final)                               # the names due at a training step
  suite.missing(workdir, step, names)                  # those without metrics at a step
  suite.run(..., stop=fn)    # raises Abandoned between batches once fn() says so

Every process runs every evaluator (the embedding is sharded over all of them); process 0
writes WORKDIR/eval/STEP/metrics.json (one flat object 'NAME/METRIC': float, written
atomically and merged with what an earlier evaluation at the same step wrote), the figures
as WORKDIR/eval/STEP/NAME_FIGURE.png, and both to TensorBoard. An abandoned run writes
nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax

from denseav_jax import io as io_lib
from denseav_jax.evals import base
from denseav_jax.evals import embed
from denseav_jax.evals import figures
from denseav_jax.evals import registry

log = logging.getLogger(__name__)

METRICS_FILE = 'metrics.json'
Abandoned = embed.Abandoned


def eval_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, 'eval', str(int(step)))


def read_metrics(workdir: str, step: int) -> dict[str, float]:
  path = os.path.join(eval_dir(workdir, step), METRICS_FILE)
  if not io_lib.exists(path):
    return {}
  try:
    data = json.loads(io_lib.read_text(path))
  except ValueError:
    log.warning('%s is not valid JSON: replacing it', path)
    return {}
  return data if isinstance(data, dict) else {}


class Suite:
  """The evaluators config.evals lists (or the `names` among them)."""

  def __init__(self, config, model, mesh, param_shardings=None, names=None):
    runner = embed.SetRunner(config, model, mesh, param_shardings)
    self.context = base.Context(config, model, mesh, runner)
    self.evaluators = registry.build(config, self.context, names)
    self.eval_at_end = bool(config.eval_at_end)

  @property
  def names(self) -> list[str]:
    return [e.name for e in self.evaluators]

  def due(self, step: int, final: bool) -> list[str]:
    """Evaluators due after training step `step` (final: the run is stopping)."""
    return [e.name for e in self.evaluators
            if (final and self.eval_at_end) or (e.every_steps and step % e.every_steps == 0)]

  def missing(self, workdir: str, step: int, names) -> list[str]:
    """Those of `names` with no metric in WORKDIR/eval/STEP/metrics.json (an evaluation
    that was abandoned, or never ran)."""
    done = {k.split('/')[0] for k in read_metrics(workdir, step)}
    return [n for n in self.names if n in names and n not in done]

  def run(self, params, step: int, workdir: str, writer=None, names=None,
          say=None, stop=None) -> dict[str, float]:
    """Runs the evaluators (all, or `names`) and writes their results (process 0).

    stop() is asked before every evaluation batch (on every host at the same batch, so it
    may agree across hosts); once it says True the run raises Abandoned, writing nothing.
    """
    chosen = [e for e in self.evaluators if names is None or e.name in names]
    results, figs = {}, {}
    cache: dict = {}  # Pair sets embedded once for all evaluators of this run.
    runner = self.context.runner
    runner.stop_check = stop
    try:
      for e in chosen:
        t0 = time.time()
        out = e.run(params, cache)
        results.update({f'{e.name}/{k}': float(v) for k, v in out.metrics.items()})
        figs.update({f'{e.name}_{k}': v for k, v in out.figures.items()})
        if say:
          say(f'evaluated {e.name} ({e.type_name}) in {time.time() - t0:.1f} s')
    finally:
      runner.stop_check = None
    del cache
    results = dict(sorted(results.items()))
    if jax.process_index() == 0 and chosen:
      out_dir = eval_dir(workdir, step)
      merged = read_metrics(workdir, step)
      merged.update(results)
      io_lib.write_json(os.path.join(out_dir, METRICS_FILE), merged, sort_keys=True)
      for name, fig in figs.items():
        figures.save_png(fig, os.path.join(out_dir, f'{name}.png'))
      if writer is not None:
        writer.scalars(step, {f'eval/{k}': v for k, v in results.items()})
        for name, fig in figs.items():
          writer.image(step, f'eval/{name}', fig)
    return results
