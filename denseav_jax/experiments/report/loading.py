"""What the report's DIRs hold: runs (workdirs, eval folders, metrics.json files,
directories of workdirs) and sweeps (directories with a sweep.json)."""

import os
from typing import Sequence

from denseav_jax import errors
from denseav_jax.experiments.report import runs as runs_lib
from denseav_jax.experiments.report import sweeps
from denseav_jax.experiments.report.runs import Run
from denseav_jax.experiments.report.sweeps import Sweep


def _file_run(path: str, name: str | None) -> Run:
  file = path if os.path.isfile(path) else os.path.join(path, 'metrics.json')
  folder = os.path.dirname(os.path.abspath(file))
  parent, evals = os.path.split(os.path.dirname(folder))
  structured = os.path.basename(folder).isdigit() and evals == 'eval'
  default = os.path.basename(parent if structured else folder)
  s = int(os.path.basename(folder)) if os.path.basename(folder).isdigit() else None
  return Run(name or default, file, s, runs_lib.load_metrics(file))


def load_dirs(paths: Sequence[str], step: int | str | None = 'latest',
              best_metric: str | None = None,
              labels: Sequence[str] | None = None) -> list[Run | Sweep]:
  """Per DIR, in order: its Run(s), or its Sweep when it has a sweep.json."""
  step = runs_lib.parse_step(step)
  if step == 'best' and not best_metric:
    raise errors.UserError('--step=best needs --best_metric KEY, e.g. retrieval/a2i_r1')
  if labels is not None and len(labels) != len(paths):
    raise errors.UserError(f'--labels has {len(labels)} names for {len(paths)} DIRs')
  items: list[Run | Sweep] = []
  for i, path in enumerate(paths):
    path = os.path.normpath(path)
    name = labels[i] if labels is not None else None
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, 'metrics.json')):
      items.append(_file_run(path, name))
    elif os.path.isdir(os.path.join(path, 'eval')):
      default = os.path.basename(os.path.abspath(path))
      items.append(runs_lib.choose(path, name or default, step, best_metric))
    elif sweeps.is_sweep(path):
      items.append(sweeps.load_sweep(path, step, best_metric, name))
    elif os.path.isdir(path):
      subs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d, 'eval')))
      if not subs:
        raise errors.UserError(f'no eval/STEP/metrics.json in {path} nor in its subfolders: '
                            'pass run workdirs (python -m denseav_jax.evaluate writes them)')
      items += [runs_lib.choose(os.path.join(path, d), f'{name}/{d}' if name else d, step,
                                best_metric) for d in subs]
    else:
      raise errors.UserError(f'{path} does not exist')
  return items


def load_runs(paths: Sequence[str], step: int | str | None = 'latest',
              best_metric: str | None = None,
              labels: Sequence[str] | None = None) -> list[Run]:
  """One Run per finished run found in `paths`, in order (a sweep's in point order)."""
  runs = []
  for item in load_dirs(paths, step, best_metric, labels):
    runs += [r for row in item.rows for r in row.runs] if isinstance(item, Sweep) else [item]
  return runs
