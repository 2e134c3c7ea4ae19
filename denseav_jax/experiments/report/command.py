"""The command line of `python -m denseav_jax.report` (usage in denseav_jax/report.py)."""

import dataclasses
import os
import sys
from urllib.parse import quote

from absl import flags

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.experiments.report import plots
from denseav_jax.experiments.report.loading import load_dirs
from denseav_jax.experiments.report.rows import group_runs
from denseav_jax.experiments.report.sweeps import Sweep, warn
from denseav_jax.experiments.report.tables import make_table


def _write_out(path: str, text: str) -> None:
  """--out, written atomically (denseav_jax.io)."""
  try:
    io_lib.write_text(path, text)
  except OSError as e:
    raise errors.UserError(f'--out={path}: cannot write ({e.strerror})') from None


def define_flags() -> None:
  flags.DEFINE_string('out', None, 'Also write the table to this markdown file.')
  flags.DEFINE_string('step', 'latest', 'Evaluation step per run: latest, a number, or best '
                      '(the highest --best_metric).')
  flags.DEFINE_string('best_metric', None, 'metrics.json key that --step=best maximises, '
                      'e.g. retrieval/a2i_r1.')
  flags.DEFINE_list('labels', None, 'Row labels, one per DIR (default: the folder names).')
  flags.DEFINE_list('metrics', None, 'metrics.json keys to show as columns (and plot) before '
                    'the paper columns, e.g. speech_prompted/basic_ap.')
  flags.DEFINE_bool('paper_columns', True, 'Show the paper columns (--nopaper_columns: only '
                    '--metrics and the sweep metric).')
  flags.DEFINE_bool('chance_ratio', False, 'Prompted-segmentation AP as multiples of the '
                    "evaluator's chance AP (e.g. 12.4×) instead of percent.")
  flags.DEFINE_bool('by_axis', False, 'Sweeps: one table per axis (its points and, for a '
                    'union around a shared point, that point) after the full table.')
  flags.DEFINE_string('plots', None, 'Folder for one PNG per sweep axis (AXIS.png). Default: '
                      'the folder of --out when a DIR is a sweep, else none; --plots= : none.')


def _check_metrics(rows, keys, sweeps) -> list[str]:
  """The metric columns: the sweeps' metrics (that some run has), then `keys`."""
  have = {k for r in rows for k in r.values}
  for key in keys:
    if key not in have:
      raise errors.UserError(f'--metrics: no run has {key!r} (keys: {", ".join(sorted(have))})')
  first = []
  for s in sweeps:
    if s.metric and s.metric not in have:
      warn(f'{s.path}: no finished run has the sweep metric {s.metric!r}')
    elif s.metric:
      first.append(s.metric)
  return list(dict.fromkeys(first + list(keys)))


def _plots(folder: str, sweeps: list[Sweep], keys, paper: bool, ratio: bool):
  """[(title, path)] of the plots written for every sweep."""
  names = [s.name for s in sweeps]
  written = []
  for i, s in enumerate(sweeps):
    prefix = '' if len(sweeps) == 1 else (
        f'{s.name}_' if names.count(s.name) == 1 else f'{i + 1}-{s.name}_')
    metrics = ([s.metric] if s.metric else []) + list(keys)
    keys_here = plots.plot_keys(s.rows, metrics, paper)
    for axis, path in plots.plot_sweep(s, keys_here, folder, prefix, ratio):
      written.append((f'{s.name}: {axis}', path))
      print(f'Wrote {path}', file=sys.stderr)
  return written


def by_axis(sweep: Sweep) -> list[tuple[str, list]]:
  """[(axis, rows)]: each axis's points (the axis's own column only), the shared point of a
  union around one point (plots.axis_series) counted on every axis."""
  out = []
  for axis in sweep.axes:
    rows = [dataclasses.replace(r, coords={axis: r.coords[axis]})
            for r in sweep.rows if axis in r.coords]
    out.append((axis, rows))
  return out


def main(argv):
  f = flags.FLAGS
  if len(argv) < 2:
    raise errors.UserError('no DIR given: python -m denseav_jax.report DIR1 DIR2 ... '
                        '[--out TABLE.md]')
  if f.best_metric and f.step != 'best':
    raise errors.UserError('--best_metric applies only with --step=best')
  items = load_dirs(argv[1:], f.step, f.best_metric, f.labels)
  sweeps = [it for it in items if isinstance(it, Sweep)]
  if f.plots and not sweeps:
    raise errors.UserError('--plots: no DIR is a sweep directory (one with a sweep.json)')
  rows = group_runs([x for it in items for x in (it.rows if isinstance(it, Sweep) else [it])])
  metrics = _check_metrics(rows, f.metrics or [], sweeps)
  if not f.paper_columns and not metrics:
    raise errors.UserError('--nopaper_columns leaves no column: add --metrics KEY1,KEY2')
  table = make_table(rows, metrics=metrics, paper=f.paper_columns, chance_ratio=f.chance_ratio)
  if f.by_axis:
    for s in sweeps:
      for axis, axis_rows in by_axis(s):
        table += f'\n### {s.name}: {axis}\n\n' + make_table(
            axis_rows, metrics=metrics, paper=f.paper_columns, chance_ratio=f.chance_ratio)
  folder = f.plots
  if folder is None:
    folder = os.path.dirname(os.path.abspath(f.out)) if f.out and sweeps else ''
  written = _plots(folder, sweeps, f.metrics or [], f.paper_columns,
                   f.chance_ratio) if folder else []
  if f.out and written:
    here = os.path.dirname(os.path.abspath(f.out))
    links = [f'![{title}]({quote(os.path.relpath(path, here), safe="/=+")})'
             for title, path in written]
    table += '\n' + '\n\n'.join(links) + '\n'
  print(table, end='')
  if f.out:
    _write_out(f.out, table)
    print(f'Wrote {f.out}', file=sys.stderr)
