"""What a sweep is: a base config and a list of named points, each a set of config overrides.

An ablation config (configs/ablations/NAME.py) builds its points from axes:

    AGG = spec.axis('agg', {'misa': {'sim.agg': 'misa'}, 'cavmae': {'sim.agg': 'cavmae'}})
    HEADS = spec.axis('heads', {'k1': {'model.num_heads': 1}, 'k2': {'model.num_heads': 2}})
    def get_config(arg=None):
      return spec.sweep_config(base='configs/synthetic.py:study',
                               points=spec.product(AGG, HEADS), seeds=(0, 1, 2))

`product` crosses axes (aggregator x heads: every pair, labels joined with '-'); `union`
lists points side by side (e.g. "each regulariser off in turn" next to "all on"). A point's
coordinates ({axis: value label}) say where it sits on each axis; the report draws one plot
per axis from them. Every run of a sweep is one point at one seed, in WORKDIR/LABEL_seedN.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

LABEL_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._=+]*$')
KEY_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')


@dataclasses.dataclass(frozen=True)
class Point:
  """One configuration of a sweep.

  label: the point's name (its runs are LABEL_seedN); letters, digits, '.', '_', '=', '+' and
    the '-' that `product` puts between axes.
  coords: ((axis, value label), ...), in axis order.
  overrides: {dotted config key: value}, e.g. {'sim.agg': 'cavmae'}.
  """
  label: str
  coords: tuple[tuple[str, str], ...]
  overrides: Mapping[str, Any]

  def to_dict(self) -> dict[str, Any]:
    return {'label': self.label, 'coords': dict(self.coords),
            'overrides': {k: _jsonable(v) for k, v in self.overrides.items()}}


def _jsonable(value):
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  return value


def _check_label(label: str, what: str) -> None:
  if not isinstance(label, str) or not LABEL_RE.match(label):
    raise ValueError(f'{what} {label!r}: use letters, digits, ".", "_", "=" and "+" (it names '
                     'the run folders)')


def _check_overrides(overrides: Mapping[str, Any], what: str) -> dict[str, Any]:
  if not isinstance(overrides, Mapping):
    raise ValueError(f'{what}: overrides must be a dict of dotted config keys, got '
                     f'{type(overrides).__name__}')
  for key in overrides:
    if not isinstance(key, str) or not KEY_RE.match(key):
      raise ValueError(f'{what}: {key!r} is not a dotted config key like "sim.agg"')
  return dict(overrides)


def axis(name: str, values: Mapping[str, Mapping[str, Any]] | Sequence[tuple[str, Mapping]]
         ) -> tuple[Point, ...]:
  """One axis: {value label: overrides} (in order) -> one point per value."""
  _check_label(name, 'axis name')
  items = list(values.items()) if isinstance(values, Mapping) else list(values)
  if not items:
    raise ValueError(f'axis {name!r} has no values')
  points = []
  for label, overrides in items:
    _check_label(label, f'axis {name!r}: value')
    points.append(Point(label, ((name, label),),
                        _check_overrides(overrides, f'axis {name!r} value {label!r}')))
  return _unique(points)


def product(*sweeps: Sequence[Point]) -> tuple[Point, ...]:
  """Every combination of one point from each sweep (the first varies slowest).

  Labels are joined with '-', coordinates concatenated, overrides merged; two factors
  setting the same key to different values is an error (which key and which points).
  """
  if not sweeps:
    raise ValueError('product() needs at least one sweep')
  out = [Point('', (), {})]
  for sweep in sweeps:
    sweep = list(sweep)
    if not sweep:
      raise ValueError('product() got an empty sweep')
    combined = []
    for left in out:
      for right in sweep:
        shared = set(dict(left.coords)) & set(dict(right.coords))
        if shared:
          raise ValueError(f'product(): axis {sorted(shared)[0]!r} appears in two factors')
        for key in set(left.overrides) & set(right.overrides):
          if left.overrides[key] != right.overrides[key]:
            raise ValueError(f'product(): points {left.label!r} and {right.label!r} set '
                             f'{key} to {left.overrides[key]!r} and {right.overrides[key]!r}')
        combined.append(Point('-'.join(l for l in (left.label, right.label) if l),
                              left.coords + right.coords,
                              {**left.overrides, **right.overrides}))
    out = combined
  return _unique(out)


def union(*sweeps: Sequence[Point]) -> tuple[Point, ...]:
  """The points of every sweep, in order (labels must stay unique)."""
  return _unique([p for sweep in sweeps for p in sweep])


def with_overrides(points: Sequence[Point], overrides: Mapping[str, Any]) -> tuple[Point, ...]:
  """`points` with `overrides` added to each (a point's own value of a key wins)."""
  extra = _check_overrides(overrides, 'with_overrides')
  return tuple(Point(p.label, p.coords, {**extra, **p.overrides}) for p in points)


def _unique(points: Iterable[Point]) -> tuple[Point, ...]:
  points = tuple(points)
  seen = set()
  for p in points:
    if p.label in seen:
      raise ValueError(f'two points of the sweep are labelled {p.label!r}')
    seen.add(p.label)
  return points


def sweep_config(*, base: str, points: Sequence[Point], seeds: Sequence[int] = (0,),
                 overrides: Mapping[str, Any] | None = None, metric: str = '',
                 description: str = '') -> ml_collections.ConfigDict:
  """The ConfigDict an ablation file's get_config returns (denseav_jax.sweep reads it).

  base: the training config every point starts from, 'FILE[:ARG]' (relative to the
    current directory or to the repository root). overrides: applied to every point
    before its own. seeds: each point runs once per seed (config.seed). metric: the
    metrics.json key the report plots first and the study is read by (e.g.
    'speech_prompted/basic_ap'); '' = the report's default columns.
  """
  points = _unique(points)
  if not points:
    raise ValueError('a sweep needs at least one point')
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and non-empty, got {seeds}')
  c = ml_collections.ConfigDict()
  c.base = base
  c.seeds = seeds
  # (key, value) pairs: ConfigDict keys cannot hold the dots of 'sim.agg'.
  c.overrides = tuple(_check_overrides(overrides or {}, 'sweep overrides').items())
  c.points = points
  c.metric = metric
  c.description = description
  return c


def points_of(config: ml_collections.ConfigDict) -> tuple[Point, ...]:
  """The points of a sweep config (after --config.KEY overrides), checked."""
  points = config.points
  if not points or not all(isinstance(p, Point) for p in points):
    raise ValueError('config.points must be a non-empty tuple of spec.Point '
                     '(build it with spec.axis / product / union)')
  return _unique(points)


def common_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The sweep's overrides applied to every point, as a dict."""
  return _check_overrides(dict(config.overrides or ()), 'config.overrides')


def run_name(point: Point, seed: int) -> str:
  """The folder of one run of the sweep."""
  return f'{point.label}_seed{seed}'
