"""A sweep directory: its sweep.json (points, their axis coordinates, seeds, metric) and
one row per point from its runs DIR/LABEL_seedN, in the sweep's order."""

import dataclasses
import json
import os
import re
import sys

from denseav_jax import errors
from denseav_jax.experiments.report import runs as runs_lib
from denseav_jax.experiments.report.rows import Row, summarise

SPEC = 'sweep.json'
RUN_RE = re.compile(r'^(.+)_seed(\d+)$')


@dataclasses.dataclass
class Sweep:
  """A sweep directory's rows (one per point, in order; `coords` and `planned` set)."""
  path: str
  name: str  # Its --labels name, else its folder name.
  metric: str  # The metrics.json key the sweep is read by; '' = none.
  axes: list[str]  # In order of first appearance among the points.
  rows: list[Row]


def is_sweep(path: str) -> bool:
  return os.path.isfile(os.path.join(path, SPEC))


def warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr)


def read_spec(file: str) -> tuple[list[tuple[str, dict[str, str]]], list[int], str]:
  """([(point label, coords)], seeds, metric) of a sweep.json; UserError naming it."""
  try:
    with open(file, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.UserError(f'{file}: not valid JSON ({e.msg} at line {e.lineno} column '
                        f'{e.colno})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f'{file}: cannot read ({e})') from None
  points = data.get('points') if isinstance(data, dict) else None
  if not isinstance(points, list) or not points:
    raise errors.UserError(f'{file}: expected an object with a non-empty "points" list')
  out = []
  for i, p in enumerate(points):
    label = p.get('label') if isinstance(p, dict) else None
    coords = p.get('coords', {}) if isinstance(p, dict) else None
    if not isinstance(label, str) or not label or '/' in label or label.startswith('.'):
      raise errors.UserError(f'{file}: point {i} has no usable "label" (a folder name)')
    if not isinstance(coords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in coords.items()):
      raise errors.UserError(f'{file}: point {label!r}: "coords" must map axis names to value '
                          'labels (strings)')
    if label in (l for l, _ in out):
      raise errors.UserError(f'{file}: two points are labelled {label!r}')
    out.append((label, dict(coords)))
  seeds = data.get('seeds', [0])
  if not isinstance(seeds, list) or not all(
      isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise errors.UserError(f'{file}: "seeds" must be a list of integers, got {seeds!r}')
  metric = data.get('metric') or ''
  if not isinstance(metric, str):
    raise errors.UserError(f'{file}: "metric" must be a metrics.json key, got {metric!r}')
  return out, list(dict.fromkeys(seeds)), metric


def _found_runs(path: str, labels: set[str]) -> dict[str, dict[int, str]]:
  """{point label: {seed: folder name}} of the LABEL_seedN folders; warns about others."""
  found: dict[str, dict[int, str]] = {}
  for d in sorted(os.listdir(path)):
    full = os.path.join(path, d)
    if not os.path.isdir(full):
      continue
    m = RUN_RE.match(d)
    if m and m.group(1) in labels:
      found.setdefault(m.group(1), {})[int(m.group(2))] = d
    elif m or os.path.isdir(os.path.join(full, 'eval')):
      warn(f'{full} is not a run of a point of {os.path.join(path, SPEC)}: ignored')
  return found


def load_sweep(path: str, step, best_metric: str | None, label: str | None = None) -> Sweep:
  """The Sweep of directory `path` (its runs at `step`; see runs.choose)."""
  points, seeds, metric = read_spec(os.path.join(path, SPEC))
  found = _found_runs(path, {p for p, _ in points})
  prefix = f'{label}/' if label else ''
  rows = []
  for point, coords in points:
    folders = {s: f'{point}_seed{s}' for s in seeds}
    folders.update(sorted(found.get(point, {}).items()))  # Extra seeds after the planned.
    runs = [runs_lib.choose(os.path.join(path, d), prefix + d, step, best_metric,
                            missing_ok=True) for d in folders.values()]
    rows.append(summarise(prefix + point, [r for r in runs if r], coords=coords,
                          planned=max(1, len(folders))))
  if not any(r.runs for r in rows):
    at = f' at step {step}' if isinstance(step, int) else ''
    raise errors.UserError(f'no finished run in the sweep {path}: none of its LABEL_seedN '
                        f'folders has an eval/STEP/metrics.json{at} yet')
  axes = list(dict.fromkeys(a for _, coords in points for a in coords))
  return Sweep(path, label or os.path.basename(os.path.abspath(path)), metric, axes, rows)
