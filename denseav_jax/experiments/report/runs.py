"""One run's evaluation: reading metrics.json files and picking a workdir's step."""

import dataclasses
import json
import math
import os
import re

from denseav_jax import errors

SEED_RE = re.compile(r'^(.+?)[_-]seed(\d+)$')


@dataclasses.dataclass
class Run:
  """One run's chosen evaluation: `metrics` is the flat metrics.json object."""
  label: str
  path: str  # The metrics.json read.
  step: int | None
  metrics: dict[str, float]


def load_metrics(path: str) -> dict[str, float]:
  """A metrics.json's flat object of floats; UserError naming the file if it is not one."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    data = json.loads(text)
  except json.JSONDecodeError as e:
    what = 'empty file' if not text.strip() else f'{e.msg} at line {e.lineno} column {e.colno}'
    raise errors.UserError(f'{path}: not valid JSON ({what})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f'{path}: cannot read ({e})') from None
  if not isinstance(data, dict):
    raise errors.UserError(f'{path}: expected a JSON object of metrics, got a '
                        f'{type(data).__name__}')
  for key, value in data.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise errors.UserError(f'{path}: the value of {key!r} is not a number: {value!r}')
  return {k: float(v) for k, v in data.items()}


def eval_steps(workdir: str) -> dict[int, str]:
  """{step: metrics.json path} of WORKDIR/eval/STEP/metrics.json, by step."""
  root = os.path.join(workdir, 'eval')
  names = os.listdir(root) if os.path.isdir(root) else []
  found = {int(n): os.path.join(root, n, 'metrics.json') for n in names if n.isdigit()}
  return {s: p for s, p in sorted(found.items()) if os.path.isfile(p)}


def parse_step(step) -> int | str:
  """'latest' (also for None), 'best' or a step number; UserError otherwise."""
  if step is None or step in ('latest', 'best'):
    return step or 'latest'
  if isinstance(step, int) or (isinstance(step, str) and step.isdigit()):
    return int(step)
  raise errors.UserError(f'--step={step}: use a step number, latest or best')


def choose(workdir: str, label: str, step, best_metric: str | None,
           missing_ok: bool = False) -> Run | None:
  """The Run of WORKDIR's evaluation at `step` (latest / best / a number).

  missing_ok: None, not an error, when the workdir has no evaluation (at that step).
  """
  steps = eval_steps(workdir)
  if not steps:
    if missing_ok:
      return None
    raise errors.UserError(f'no eval/STEP/metrics.json in {workdir}: evaluate it first '
                        '(python -m denseav_jax.evaluate --config ... --workdir DIR)')
  if step == 'best':
    loaded = {s: load_metrics(p) for s, p in steps.items()}
    scored = [(m[best_metric], s) for s, m in loaded.items()
              if not math.isnan(m.get(best_metric, math.nan))]
    if not scored:
      raise errors.UserError(f'--best_metric={best_metric}: no evaluation in {workdir}/eval has '
                          f'it (keys: {", ".join(sorted(loaded[max(loaded)]))})')
    _, s = max(scored)  # Ties: the later step.
    return Run(label, steps[s], s, loaded[s])
  s = max(steps) if step == 'latest' else step
  if s not in steps:
    if missing_ok:
      return None
    raise errors.UserError(f'--step={step}: no eval/{step}/metrics.json in {workdir} (steps '
                        f'there: {", ".join(map(str, steps))})')
  return Run(label, steps[s], s, load_metrics(steps[s]))


def seed_group(run: Run) -> str | None:
  """The row key of `run`: its label less a trailing _seed{N} / -seed{N}, else None."""
  m = SEED_RE.match(run.label)
  return m.group(1) if m else None
