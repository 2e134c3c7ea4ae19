"""A markdown table comparing the evaluation results of runs, in the paper's columns.

  python -m denseav_jax.report DIR1 DIR2 ... [--out TABLE.md] [--step N|latest|best]
      [--best_metric KEY] [--labels a,b]

Each DIR is a run workdir (its DIR/eval/STEP/metrics.json; a converted model evaluated
without training has DIR/eval/0), an evaluation folder DIR/eval/STEP, a metrics.json file,
or a sweep directory whose subfolders are run workdirs (one row per subfolder, labelled by
its name). Runs whose labels differ only by a trailing `_seed{N}` / `-seed{N}` form one row:
the mean ± the population standard deviation over the seeds, with the seed count.

--step picks each workdir's evaluation: `latest` (default), a step number, or `best`: the
step with the highest --best_metric (a metrics.json key, e.g. retrieval/a2i_r1). An
evaluation folder or metrics.json named on the command line is used as given. --labels
(one per DIR) replaces the folder names; a sweep's rows become LABEL/SUBFOLDER.

The table is printed, and written atomically to --out. Python API:

  runs = load_runs(['runs/a', 'runs/b'], step='best', best_metric='retrieval/a2i_r1')
  print(make_table(runs))
"""

import dataclasses
import json
import math
import os
import re
import statistics
import sys
from typing import Callable, Sequence

from absl import flags

from denseav_jax import cli

MISSING = '–'
# Paper columns: (metric suffixes in order of preference, column title). The evaluator
# type is recognised from the suffixes its keys have.
PROMPTED = ((('advanced_ap', 'basic_ap'), 'mAP'), (('advanced_iou', 'basic_iou'), 'mIoU'))
RETRIEVAL = tuple(((f'{d}_r{k}',), f'{arrow} R@{k}') for d, arrow in (('a2i', 'A→I'),
                                                                      ('i2a', 'I→A'))
                  for k in (1, 5, 10))
DISENTANGLE = ((('ap_dis',), 'ap_dis'), (('act_dis',), 'act_dis'))
CHANCE = {'chance_ap': 'mAP', 'chance_r1': 'R@1', 'chance_r5': 'R@5', 'chance_r10': 'R@10'}
SEED_RE = re.compile(r'^(.+?)[_-]seed(\d+)$')


@dataclasses.dataclass
class Run:
  """One run's chosen evaluation: `metrics` is the flat metrics.json object."""
  label: str
  path: str  # The metrics.json read.
  step: int | None
  metrics: dict[str, float]


@dataclasses.dataclass
class Row:
  """A table row: one run, or several seeds of one (`values` are their means)."""
  label: str
  runs: list[Run]
  values: dict[str, float]
  spread: dict[str, float]  # Population std over the runs that have the key.
  counts: dict[str, int]  # How many runs have the key.


def load_metrics(path: str) -> dict[str, float]:
  """A metrics.json's flat object of floats; UserError naming the file if it is not one."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    data = json.loads(text)
  except json.JSONDecodeError as e:
    what = 'empty file' if not text.strip() else f'{e.msg} at line {e.lineno} column {e.colno}'
    raise cli.UserError(f'{path}: not valid JSON ({what})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise cli.UserError(f'{path}: cannot read ({e})') from None
  if not isinstance(data, dict):
    raise cli.UserError(f'{path}: expected a JSON object of metrics, got a '
                        f'{type(data).__name__}')
  for key, value in data.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise cli.UserError(f'{path}: the value of {key!r} is not a number: {value!r}')
  return {k: float(v) for k, v in data.items()}


def eval_steps(workdir: str) -> dict[int, str]:
  """{step: metrics.json path} of WORKDIR/eval/STEP/metrics.json, by step."""
  root = os.path.join(workdir, 'eval')
  names = os.listdir(root) if os.path.isdir(root) else []
  found = {int(n): os.path.join(root, n, 'metrics.json') for n in names if n.isdigit()}
  return {s: p for s, p in sorted(found.items()) if os.path.isfile(p)}


def _choose(workdir: str, label: str, step, best_metric: str | None) -> Run:
  steps = eval_steps(workdir)
  if not steps:
    raise cli.UserError(f'no eval/STEP/metrics.json in {workdir}: evaluate it first '
                        '(python -m denseav_jax.evaluate --config ... --workdir DIR)')
  if step == 'best':
    loaded = {s: load_metrics(p) for s, p in steps.items()}
    scored = [(m[best_metric], s) for s, m in loaded.items()
              if not math.isnan(m.get(best_metric, math.nan))]
    if not scored:
      raise cli.UserError(f'--best_metric={best_metric}: no evaluation in {workdir}/eval has '
                          f'it (keys: {", ".join(sorted(loaded[max(loaded)]))})')
    _, s = max(scored)  # Ties: the later step.
    return Run(label, steps[s], s, loaded[s])
  s = max(steps) if step == 'latest' else step
  if s not in steps:
    raise cli.UserError(f'--step={step}: no eval/{step}/metrics.json in {workdir} (steps '
                        f'there: {", ".join(map(str, steps))})')
  return Run(label, steps[s], s, load_metrics(steps[s]))


def _parse_step(step) -> int | str:
  if step is None or step in ('latest', 'best'):
    return step or 'latest'
  if isinstance(step, int) or (isinstance(step, str) and step.isdigit()):
    return int(step)
  raise cli.UserError(f'--step={step}: use a step number, latest or best')


def load_runs(paths: Sequence[str], step: int | str | None = 'latest',
              best_metric: str | None = None,
              labels: Sequence[str] | None = None) -> list[Run]:
  """One Run per run found in `paths` (see the module docstring), in order."""
  step = _parse_step(step)
  if step == 'best' and not best_metric:
    raise cli.UserError('--step=best needs --best_metric KEY, e.g. retrieval/a2i_r1')
  if labels is not None and len(labels) != len(paths):
    raise cli.UserError(f'--labels has {len(labels)} names for {len(paths)} DIRs')
  runs = []
  for i, path in enumerate(paths):
    path = os.path.normpath(path)
    name = labels[i] if labels is not None else None
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, 'metrics.json')):
      file = path if os.path.isfile(path) else os.path.join(path, 'metrics.json')
      folder = os.path.dirname(os.path.abspath(file))
      parent, evals = os.path.split(os.path.dirname(folder))
      structured = os.path.basename(folder).isdigit() and evals == 'eval'
      default = os.path.basename(parent if structured else folder)
      s = int(os.path.basename(folder)) if os.path.basename(folder).isdigit() else None
      runs.append(Run(name or default, file, s, load_metrics(file)))
    elif os.path.isdir(os.path.join(path, 'eval')):
      default = os.path.basename(os.path.abspath(path))
      runs.append(_choose(path, name or default, step, best_metric))
    elif os.path.isdir(path):
      subs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d, 'eval')))
      if not subs:
        raise cli.UserError(f'no eval/STEP/metrics.json in {path} nor in its subfolders: '
                            'pass run workdirs (python -m denseav_jax.evaluate writes them)')
      runs += [_choose(os.path.join(path, d), f'{name}/{d}' if name else d, step, best_metric)
               for d in subs]
    else:
      raise cli.UserError(f'{path} does not exist')
  return runs


def seed_group(run: Run) -> str | None:
  """The row key of `run`: its label less a trailing _seed{N} / -seed{N}, else None."""
  m = SEED_RE.match(run.label)
  return m.group(1) if m else None


def group_runs(runs: Sequence[Run],
               key: Callable[[Run], str | None] | None = seed_group) -> list[Row]:
  """Rows of the runs with the same key (None: a row of its own), in first-run order."""
  groups: dict[object, tuple[str, list[Run]]] = {}
  for i, run in enumerate(runs):
    k = key(run) if key else None
    groups.setdefault(('group', k) if k is not None else ('run', i), (k, []))[1].append(run)
  rows = []
  for name, members in groups.values():
    keys = dict.fromkeys(k for r in members for k in r.metrics)
    vals = {k: [r.metrics[k] for r in members if k in r.metrics] for k in keys}
    rows.append(Row(name if len(members) > 1 else members[0].label, members,
                    {k: statistics.fmean(v) for k, v in vals.items()},
                    {k: statistics.pstdev(v) for k, v in vals.items()},
                    {k: len(v) for k, v in vals.items()}))
  return rows


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


def _cell(row: Row, key: str) -> str:
  if key not in row.values or math.isnan(row.values[key]):
    return MISSING
  text = f'{100 * row.values[key]:.1f}'
  if len(row.runs) > 1:
    text += f' ± {100 * row.spread[key]:.1f}'
    if row.counts[key] < len(row.runs):
      text += f' ({row.counts[key]}/{len(row.runs)})'
  return text


def _chance_line(rows: Sequence[Row]) -> str:
  parts = []
  for key in dict.fromkeys(k for r in rows for k in r.values):
    name, _, suffix = key.rpartition('/')
    values = sorted({f'{100 * r.values[key]:.1f}' for r in rows if key in r.values}, key=float)
    if suffix in CHANCE:
      shown = values[0] if len(values) == 1 else f'{values[0]}–{values[-1]}'
      parts.append(f'{name} {CHANCE[suffix]} {shown}')
  return f'Chance: {"; ".join(parts)}.' if parts else ''


def make_table(runs: Sequence[Run] | Sequence[Row],
               group: Callable[[Run], str | None] | None = seed_group) -> str:
  """The markdown table (and its legend) of `runs`, grouped into rows by `group`."""
  rows = list(runs) if runs and isinstance(runs[0], Row) else group_runs(runs, group)
  cols, notes = columns(rows)
  header = ['run', 'step'] + (['seeds'] if any(len(r.runs) > 1 for r in rows) else [])
  table = []
  for r in rows:
    steps = sorted({run.step for run in r.runs}, key=lambda s: -1 if s is None else s)
    cells = [r.label.replace('|', '\\|'),
             ', '.join(MISSING if s is None else str(s) for s in steps)]
    table.append(cells + ([str(len(r.runs))] if len(header) == 3 else []))
  for title, key in cols:
    shown = [_cell(r, key) for r in rows]
    best = max((float(c.split()[0]) for c in shown if c != MISSING), default=None)
    for cells, c in zip(table, shown):
      cells.append(f'**{c}**' if c != MISSING and float(c.split()[0]) == best else c)
    header.append(title)
  widths = [max(len(x) for x in column) for column in zip(header, *table)]
  line = lambda cells: '| ' + ' | '.join(c.rjust(w) if i else c.ljust(w)
                                          for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
  rule = '|' + '|'.join('-' * (w + 1) + (':' if i else '-') for i, w in enumerate(widths)) + '|'
  out = [line(header), rule] + [line(cells) for cells in table]
  legend = 'Percent; the best of each column in bold.'
  if notes:
    legend += ' Prompted segmentation: ' + '; '.join(notes) + '.'
  if len(header) > 2 and header[2] == 'seeds':
    legend += ' Seed rows: mean ± population std over the seeds.'
  chance = _chance_line(rows)
  return '\n'.join(out + ['', legend] + ([chance] if chance else [])) + '\n'


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file, so readers never see half of it."""
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    raise cli.UserError(f'--out={path}: cannot write ({e.strerror})') from None


def define_flags() -> None:
  flags.DEFINE_string('out', None, 'Also write the table to this markdown file.')
  flags.DEFINE_string('step', 'latest', 'Evaluation step per run: latest, a number, or best '
                      '(the highest --best_metric).')
  flags.DEFINE_string('best_metric', None, 'metrics.json key that --step=best maximises, '
                      'e.g. retrieval/a2i_r1.')
  flags.DEFINE_list('labels', None, 'Row labels, one per DIR (default: the folder names).')


def main(argv):
  f = flags.FLAGS
  if len(argv) < 2:
    raise cli.UserError('no DIR given: python -m denseav_jax.report DIR1 DIR2 ... '
                        '[--out TABLE.md]')
  if f.best_metric and f.step != 'best':
    raise cli.UserError('--best_metric applies only with --step=best')
  table = make_table(load_runs(argv[1:], f.step, f.best_metric, f.labels))
  print(table, end='')
  if f.out:
    write_atomic(f.out, table)
    print(f'Wrote {f.out}', file=sys.stderr)


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
