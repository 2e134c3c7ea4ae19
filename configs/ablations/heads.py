"""Heads ablation: one similarity head or two, and how two heads are combined.

K = 1 against K = 2 with each head aggregation (`max_elementwise`: max over heads of the
volume before the reductions, DenseAV's; `sum` / `max` of the per-head scores);
docs/method.md#head-aggregation. `:cross` crosses the heads with the aggregators instead
(aggregator x heads, 7 x 2 points).
"""

from denseav_jax.configs.ablations import aggregator
from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec



def axis(one_head_extra=None, all_aggregations=True):
  """The heads axis. one_head_extra: overrides a K = 1 point also needs (a base that
  evaluates disentanglement must switch that evaluator off for one head)."""
  k1 = {'model.num_heads': 1, **(one_head_extra or {})}
  values = {'k1': k1, 'k2': {'model.num_heads': 2, 'sim.head_agg': 'max_elementwise'}}
  if all_aggregations:
    values.update(k2sum={'model.num_heads': 2, 'sim.head_agg': 'sum'},
                  k2max={'model.num_heads': 2, 'sim.head_agg': 'max'})
  return spec.axis('heads', values)


AXIS = axis()
K_AXIS = axis(all_aggregations=False)


def get_config(arg=None):
  args = [a for a in (arg or '').split(',') if a]
  cross = 'cross' in args
  rest = ','.join(a for a in args if a != 'cross')
  base, overrides = common.base(rest)
  extra = {'evals.disentangle.enabled': False} if rest == '2head' else None
  points = (spec.product(aggregator.AXIS, axis(extra, all_aggregations=False)) if cross
            else axis(extra))
  return spec.sweep_config(base=base, points=points, seeds=common.seeds(rest),
                           overrides=overrides, metric='speech_prompted/basic_ap',
                           description='similarity heads (model.num_heads, sim.head_agg)'
                           + (' x aggregator' if cross else ''))
