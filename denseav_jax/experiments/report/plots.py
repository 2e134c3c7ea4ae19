"""One PNG per sweep axis: each metric against the axis's values (matplotlib Figure with
its own Agg canvas, no pyplot state).

x: the axis's value labels in the sweep's order; y: the mean over the seeds, error bars
the population std, each seed a small dot; one series per combination of the other axes'
values. Points without the axis (a union of sweeps) are left out of its plot.
"""

import math
import os
import re
from typing import Sequence

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.experiments.report.rows import Row, chance_ratios
from denseav_jax.experiments.report.sweeps import Sweep, warn
from denseav_jax.experiments.report.tables import RATIO, columns

PLOTTED = ('advanced_ap', 'basic_ap', 'a2i_r1', 'ap_dis')  # Paper columns that get a plot.
MARKERS = 'osD^vP*X'


def plot_keys(rows: Sequence[Row], metrics: Sequence[str] = (),
              paper: bool = True) -> list[tuple[str, str]]:
  """[(title, key)]: `metrics` (e.g. the sweep's), then the paper's prompted mAP, A→I R@1
  and ap_dis columns, those the rows have."""
  have = {k for r in rows for k in r.values}
  keys = [(k, k) for k in metrics if k in have]
  if paper:
    keys += [(t, k) for t, k in columns(rows)[0] if k.rpartition('/')[2] in PLOTTED]
  return list({k: (t, k) for t, k in keys}.values())  # The first title of each key.


def _has(row: Row, key: str) -> bool:
  return key in row.values and not math.isnan(row.values[key])


def _file_name(axis: str) -> str:
  return re.sub(r'[^A-Za-z0-9.=+_-]', '_', axis).lstrip('.') or 'axis'


def axis_series(rows: Sequence[Row], axes: Sequence[str],
                axis: str) -> tuple[list[str], dict[str, list[Row]]]:
  """The plot of `axis`: its value labels (in the rows' order) and {series name: rows},
  one series per combination of the other axes' values ('agg=misa, heads=k1'). Rows
  without `axis` (a union's points on other axes) are left out.

  A union built around one shared point (a point with a value on every axis, the others
  varying one axis each, like configs/ablations/study.py) reads a missing value as that
  shared point's: the axis's points then form one series with it."""
  on_axis = [r for r in rows if axis in r.coords]
  values = list(dict.fromkeys(r.coords[axis] for r in on_axis))
  others = [a for a in axes if a != axis]
  full = [r for r in rows if all(a in r.coords for a in axes)]
  shared = full[0].coords if len(full) == 1 and len(rows) > 1 else {}
  series: dict[str, list[Row]] = {}
  for r in on_axis:
    coords = {**shared, **r.coords}
    name = ', '.join(f'{a}={coords[a]}' for a in others if a in coords)
    series.setdefault(name or 'other axes unset', []).append(r)
  return values, series


def _draw(ax, rows: list[Row], axis: str, values: list[str], series: dict, key: str,
          scale: float) -> None:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  colours = colormaps['tab10']
  n = len(series)
  for j, (name, members) in enumerate(series.items()):
    offset = (j - (n - 1) / 2) * 0.08 if n > 1 else 0.0
    points = sorted(((values.index(r.coords[axis]) + offset, r) for r in members
                     if _has(r, key)), key=lambda p: p[0])
    for x, r in points:
      seeds = [scale * run.metrics[key] for run in r.runs
               if not math.isnan(run.metrics.get(key, math.nan))]
      if len(seeds) > 1:
        ax.plot([x] * len(seeds), seeds, '.', ms=4, alpha=0.5, color=colours(j % 10),
                zorder=3)
    if points:
      ax.errorbar([x for x, _ in points], [scale * r.values[key] for _, r in points],
                  yerr=[scale * r.spread[key] for _, r in points], marker=MARKERS[j % 8], ms=5,
                  capsize=3, linewidth=1.2, color=colours(j % 10), label=name)
  ax.set_xticks(range(len(values)), values)
  ax.set_xlim(-0.5, len(values) - 0.5)
  if sum(len(v) for v in values) > 30:
    ax.tick_params(axis='x', labelrotation=30)
  ax.grid(alpha=0.3)


def _save(fig, path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  try:
    with io_lib.atomic_path(path) as tmp:
      with open(tmp, 'wb') as f:
        FigureCanvasAgg(fig).print_png(f)
  except OSError as e:
    raise errors.UserError(f'--plots: cannot write {path} ({e.strerror})') from None


def plot_sweep(sweep: Sweep, keys: Sequence[tuple[str, str]], folder: str, prefix: str = '',
               chance_ratio: bool = False) -> list[tuple[str, str]]:
  """Writes FOLDER/PREFIXAXIS.png per axis of `sweep`; [(axis, path)] of those written."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  rows, ratio = chance_ratios(sweep.rows) if chance_ratio else (sweep.rows, set())
  written = []
  for axis in sweep.axes:
    values, series = axis_series(rows, sweep.axes, axis)
    on_axis = [r for members in series.values() for r in members]
    shown = [(t, k) for t, k in keys if any(_has(r, k) for r in on_axis)]
    if not shown:
      warn(f'{sweep.path}: no finished run on the axis {axis!r} has the plotted metrics: '
           'no plot')
      continue
    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.5), dpi=100, layout='constrained')
    for i, (title, key) in enumerate(shown):
      ax = fig.add_subplot(nrows, ncols, i + 1)
      _draw(ax, on_axis, axis, values, series, key, 1.0 if key in ratio else 100.0)
      ax.set_title(title + (RATIO if key in ratio else ''), fontsize=9)
      ax.set_ylabel('× chance' if key in ratio else '%', fontsize=8)
      ax.set_xlabel(axis, fontsize=8)
      if i == 0 and len(series) > 1:
        ax.legend(fontsize=7)
    fig.suptitle(f'{sweep.name}: {axis} (mean ± std over seeds)', fontsize=10)
    path = os.path.join(folder, _file_name(prefix + axis) + '.png')
    _save(fig, path)
    written.append((axis, path))
  return written
