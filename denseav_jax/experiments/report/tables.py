"""The markdown table: the paper's columns (plus chosen metrics.json keys), best in bold."""

import math
from typing import Callable, Sequence

from denseav_jax.experiments.report.rows import Row, chance_ratios, group_runs
from denseav_jax.experiments.report.runs import Run, seed_group

MISSING = '–'
# Paper columns: (metric suffixes in order of preference, column title). The evaluator
# type is recognised from the suffixes its keys have.
PROMPTED = ((('advanced_ap', 'basic_ap'), 'mAP'), (('advanced_iou', 'basic_iou'), 'mIoU'))
RETRIEVAL = tuple(((f'{d}_r{k}',), f'{arrow} R@{k}') for d, arrow in (('a2i', 'A→I'),
                                                                      ('i2a', 'I→A'))
                  for k in (1, 5, 10))
DISENTANGLE = ((('ap_dis',), 'ap_dis'), (('act_dis',), 'act_dis'))
CHANCE = {'chance_ap': 'mAP', 'chance_r1': 'R@1', 'chance_r5': 'R@5', 'chance_r10': 'R@10'}
RATIO = ' (× chance)'


def columns(rows: Sequence[Row]) -> tuple[list[tuple[str, str]], list[str]]:
  """[(title, metrics key)] of the paper's columns the rows have, and legend notes."""
  keys = list(dict.fromkeys(k for r in rows for k in r.values))
  suffixes: dict[str, set[str]] = {}
  for k in keys:
    name, _, suffix = k.rpartition('/')
    suffixes.setdefault(name, set()).add(suffix)
  cols, notes = [], []
  for name, have in suffixes.items():
    variants = set()
    for spec in (PROMPTED, RETRIEVAL, DISENTANGLE):
      for options, title in spec:
        suffix = next((o for o in options if o in have), None)  # The first one present.
        if suffix:
          cols.append((f'{name} {title}'.strip(), f'{name}/{suffix}' if name else suffix))
          variants |= {suffix.split('_')[0]} if spec is PROMPTED else set()
    if variants:
      notes.append(f'{name}: {"/".join(sorted(variants))} mAP and mIoU')
  return cols, notes


def table_columns(rows: Sequence[Row], metrics: Sequence[str] = (),
                  paper: bool = True) -> tuple[list[tuple[str, str]], list[str]]:
  """The `metrics` keys (titled by the key; those the paper columns show are left out
  unless `paper` is False), then the paper's columns; and the legend notes."""
  cols, notes = columns(rows) if paper else ([], [])
  shown = {key for _, key in cols}
  extra = [(k, k) for k in dict.fromkeys(metrics) if k not in shown]
  return extra + cols, notes


def _cell(row: Row, key: str, ratio: bool) -> tuple[str, float | None]:
  """The cell's text and the number it shows (None: missing)."""
  if key not in row.values or math.isnan(row.values[key]):
    return MISSING, None
  scale, unit = (1, '×') if ratio else (100, '')
  text = f'{scale * row.values[key]:.1f}'
  number = float(text)
  if len(row.runs) > 1:
    text += f' ± {scale * row.spread[key]:.1f}'
    if row.counts[key] < len(row.runs):
      text += f' ({row.counts[key]}/{len(row.runs)})'
  return text + unit, number


def _chance_line(rows: Sequence[Row]) -> str:
  parts = []
  for key in dict.fromkeys(k for r in rows for k in r.values):
    name, _, suffix = key.rpartition('/')
    values = sorted({f'{100 * r.values[key]:.1f}' for r in rows if key in r.values}, key=float)
    if suffix in CHANCE:
      shown = values[0] if len(values) == 1 else f'{values[0]}–{values[-1]}'
      parts.append(f'{name} {CHANCE[suffix]} {shown}')
  return f'Chance: {"; ".join(parts)}.' if parts else ''


def _seeds(row: Row) -> str:
  done = len(row.runs)
  return f'{done}/{row.planned}' if row.planned > done else str(done)


def _markdown(header: list[str], table: list[list[str]], left: int) -> list[str]:
  """The table's lines; the first `left` columns left-aligned, the others right-aligned."""
  widths = [max(len(x) for x in column) for column in zip(header, *table)]
  line = lambda cells: '| ' + ' | '.join(c.ljust(w) if i < left else c.rjust(w)
                                          for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
  rule = '|' + '|'.join('-' * (w + 1) + ('-' if i < left else ':')
                        for i, w in enumerate(widths)) + '|'
  return [line(header), rule] + [line(cells) for cells in table]


def _legend(notes, ratio, seeds, partial) -> str:
  legend = 'Percent' + ('; AP columns marked (× chance): multiples of the chance AP'
                        if ratio else '') + '; the best of each column in bold.'
  if notes:
    legend += ' Prompted segmentation: ' + '; '.join(notes) + '.'
  if seeds:
    legend += ' Seed rows: mean ± population std over the seeds.'
  if partial:
    legend += (' seeds N/M: N of the M runs have finished (the row shows those); '
               '(not finished): none has yet.')
  return legend


def make_table(runs: Sequence[Run] | Sequence[Row],
               group: Callable[[Run], str | None] | None = seed_group, *,
               metrics: Sequence[str] = (), paper: bool = True,
               chance_ratio: bool = False) -> str:
  """The markdown table (and its legend) of `runs`, grouped into rows by `group` (Rows,
  e.g. a sweep's, are kept as they are).

  metrics: metrics.json keys to show as columns before the paper's (`paper`: show those);
  chance_ratio: prompted-segmentation AP as multiples of the evaluator's chance AP.
  """
  rows = group_runs(runs, group)
  shown, ratio = chance_ratios(rows) if chance_ratio else (rows, set())
  cols, notes = table_columns(rows, metrics, paper)
  axes = list(dict.fromkeys(a for r in rows for a in r.coords))
  seeds = any(len(r.runs) > 1 or r.planned for r in rows)
  header = ['run', *axes, 'step'] + (['seeds'] if seeds else [])
  table = []
  for r in rows:
    steps = sorted({run.step for run in r.runs}, key=lambda s: -1 if s is None else s)
    label = r.label + (' (not finished)' if r.planned and not r.runs else '')
    cells = [label.replace('|', '\\|'), *(r.coords.get(a, '') for a in axes),
             ', '.join(MISSING if s is None else str(s) for s in steps) or MISSING]
    table.append(cells + ([_seeds(r)] if seeds else []))
  for title, key in cols:
    cells = [_cell(r, key, key in ratio) for r in shown]
    best = max((n for _, n in cells if n is not None), default=None)
    for row_cells, (text, n) in zip(table, cells):
      row_cells.append(f'**{text}**' if n is not None and n == best else text)
    header.append(title + (RATIO if key in ratio else ''))
  out = _markdown(header, table, 1 + len(axes))
  legend = _legend(notes, any(k in ratio for _, k in cols), seeds,
                   any(r.planned > len(r.runs) for r in rows))
  chance = _chance_line(rows)
  return '\n'.join(out + ['', legend] + ([chance] if chance else [])) + '\n'
