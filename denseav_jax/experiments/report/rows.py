"""Table rows: runs grouped (seeds of one configuration) into mean ± std."""

import dataclasses
import re
import statistics
from typing import Callable, Sequence

from denseav_jax.experiments.report.runs import Run, seed_group

CHANCE_AP = 'chance_ap'
AP_RE = re.compile(r'(^|_)ap(_h\d+)?$')  # basic_ap, advanced_ap, basic_ap_h0 (one head).


@dataclasses.dataclass
class Row:
  """A table row: one run, or several seeds of one (`values` are their means).

  A sweep's row also has `coords` ({axis: value label}) and `planned`, the number of runs
  the sweep has for it (finished or not: `runs` holds the finished ones only).
  """
  label: str
  runs: list[Run]
  values: dict[str, float]
  spread: dict[str, float]  # Population std over the runs that have the key.
  counts: dict[str, int]  # How many runs have the key.
  coords: dict[str, str] = dataclasses.field(default_factory=dict)
  planned: int = 0  # 0: not a sweep row.


def summarise(label: str, runs: Sequence[Run], **extra) -> Row:
  """The Row of `runs` (mean, population std and count of every key)."""
  keys = dict.fromkeys(k for r in runs for k in r.metrics)
  vals = {k: [r.metrics[k] for r in runs if k in r.metrics] for k in keys}
  return Row(label, list(runs), {k: statistics.fmean(v) for k, v in vals.items()},
             {k: statistics.pstdev(v) for k, v in vals.items()},
             {k: len(v) for k, v in vals.items()}, **extra)


def group_runs(runs: Sequence[Run | Row],
               key: Callable[[Run], str | None] | None = seed_group) -> list[Row]:
  """Rows of the runs with the same key (None: a row of its own), in first-run order.

  A Row among `runs` (e.g. a sweep's) is kept as it is, in its place.
  """
  groups: dict[object, tuple[str, list]] = {}
  for i, run in enumerate(runs):
    k = key(run) if key and isinstance(run, Run) else None
    slot = ('group', k) if k is not None else ('item', i)
    groups.setdefault(slot, (k, []))[1].append(run)
  rows = []
  for name, members in groups.values():
    if isinstance(members[0], Row):
      rows.append(members[0])
    else:
      rows.append(summarise(name if len(members) > 1 else members[0].label, members))
  return rows


def ratio_keys(rows: Sequence[Row]) -> set[str]:
  """The prompted-segmentation AP keys (NAME/basic_ap, NAME/advanced_ap, per head
  NAME/basic_ap_h{k}) of evaluators with a NAME/chance_ap."""
  keys = {k for r in rows for k in r.values}
  out = set()
  for k in keys:
    name, _, suffix = k.rpartition('/')
    if AP_RE.search(suffix) and suffix != CHANCE_AP and f'{name}/{CHANCE_AP}' in keys:
      out.add(k)
  return out


def _ratios(run: Run, keys: set[str]) -> Run:
  metrics = dict(run.metrics)
  for k in keys & set(metrics):
    chance = metrics.get(f'{k.rpartition("/")[0]}/{CHANCE_AP}', 0.0)
    if chance > 0:
      metrics[k] = metrics[k] / chance
    else:
      del metrics[k]  # No chance level to divide by: shown as missing.
  return dataclasses.replace(run, metrics=metrics)


def chance_ratios(rows: Sequence[Row]) -> tuple[list[Row], set[str]]:
  """The rows with every run's prompted AP divided by its chance AP, and those keys."""
  keys = ratio_keys(rows)
  out = []
  for r in rows:
    runs = [_ratios(run, keys) for run in r.runs]
    out.append(summarise(r.label, runs, coords=r.coords, planned=r.planned))
  return out, keys
