"""A sweep on disk: its runs (point x seed), WORKDIR/sweep.json, RUN/point.json, the
results; and `run_sweep`, what `python -m denseav_jax.sweep` does."""

import dataclasses
import json
import os
import shlex
from typing import Any, Sequence

import ml_collections

from denseav_jax import errors
from denseav_jax.experiments import report
from denseav_jax.experiments.sweep import configs
from denseav_jax.experiments.sweep import launchers
from denseav_jax.experiments.sweep import schedule
from denseav_jax.experiments.sweep import spec
from denseav_jax.experiments.sweep import status


def say(*args, **kwargs) -> None:
  print(*args, **kwargs, flush=True)


@dataclasses.dataclass
class Run:
  """One point at one seed, trained in WORKDIR/LABEL_seedN."""
  name: str
  point: spec.Point
  seed: int
  dir: str
  base: str  # 'FILE[:ARG]', relative to the repository root when inside it.
  overrides: dict[str, Any]  # The sweep's and the point's, coerced (no seed).
  num_steps: int

  @property
  def flags(self) -> list[str]:
    return configs.override_flags({'seed': self.seed, **self.overrides})

  def train_command(self) -> list[str]:
    return launchers.train_command(self.base, self.dir, self.flags)


@dataclasses.dataclass
class Sweep:
  config_file: str
  workdir: str
  base: str
  seeds: tuple[int, ...]
  common: dict[str, Any]
  points: tuple[spec.Point, ...]
  metric: str
  description: str
  runs: list[Run]  # Every point x seed, seed by seed.

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)


def _jsonable(value):
  return json.loads(json.dumps(value, default=str))


def load(config: ml_collections.ConfigDict, workdir: str, config_file: str = '') -> Sweep:
  """The sweep of a sweep config, every run's training config built and checked."""
  where = f'--config={config_file}' if config_file else 'the sweep config'
  if not isinstance(config, ml_collections.ConfigDict) or 'points' not in config:
    raise errors.UserError(f'{where} is not a sweep config (no points): an ablation file\'s '
                        'get_config returns denseav_jax.experiments.sweep.spec.sweep_config(...)')
  try:
    points = spec.points_of(config)
    common = spec.common_overrides(config)
    seeds = tuple(int(s) for s in config.seeds)
  except (ValueError, TypeError) as e:
    raise errors.UserError(f'{where}: {e}') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.UserError(f'{where}: seeds={seeds} must be distinct and non-empty')
  base = configs.resolve_base(config.base)
  base_config = configs.load_base(base)
  runs_by_point = {}
  for p in points:
    what = f'point {p.label!r}'
    overrides = {**common, **p.overrides}
    if 'seed' in overrides:
      raise errors.UserError(f'{what}: overrides seed; list the seeds in config.seeds instead')
    built, coerced = configs.build(base_config, overrides, what)
    runs_by_point[p.label] = (coerced, int(built.num_train_steps))
  runs = []
  for seed in seeds:
    for p in points:
      name = spec.run_name(p, seed)
      coerced, steps = runs_by_point[p.label]
      runs.append(Run(name, p, seed, os.path.join(workdir, name), base, coerced, steps))
  return Sweep(config_file, workdir, base, seeds, common, points, str(config.metric),
               str(config.description), runs)


def select(sweep: Sweep, only: Sequence[str]) -> list[Run]:
  """The runs of the points labelled in `only` (all if empty)."""
  labels = [p.label for p in sweep.points]
  unknown = [l for l in only if l not in labels]
  if unknown:
    raise errors.UserError(f'--only={",".join(only)}: no point labelled '
                        f'{", ".join(unknown)} in this sweep (points: {", ".join(labels)})')
  return [r for r in sweep.runs if not only or r.point.label in only]


def check_unchanged(sweep: Sweep) -> dict | None:
  """The WORKDIR/sweep.json of an earlier invocation (None if none); UserError if one of
  its points has the same label but another base or other overrides now."""
  path = os.path.join(sweep.workdir, status.SWEEP_FILE)
  old = status.read_json(path)
  if old is None:
    return None
  if not isinstance(old, dict) or not isinstance(old.get('points', []), list):
    raise errors.UserError(f'{path} is not a sweep.json of denseav_jax.sweep: use a new '
                        '--workdir')
  old_points = {p.get('label'): p for p in old.get('points', [])}
  for p in sweep.points:
    if p.label not in old_points:
      continue
    was = _jsonable({**old.get('overrides', {}), **old_points[p.label].get('overrides', {})})
    now = _jsonable({**sweep.common, **p.overrides})
    change = (f'base {old.get("base")} -> {sweep.base}' if old.get('base') != sweep.base
              else f'overrides {was} -> {now}' if was != now else '')
    if change:
      raise errors.UserError(f'point {p.label!r} is not the one {path} recorded ({change}): use '
                          'a new --workdir, or rename the point')
  return old


def write_layout(sweep: Sweep, runs: Sequence[Run], old: dict | None, argv: Sequence[str],
                 launcher: str) -> None:
  """WORKDIR/sweep.json (earlier points and seeds kept) and RUN/point.json of `runs`."""
  old = old or {}
  labels = {p.label for p in sweep.points}
  points = [p.to_dict() for p in sweep.points]
  points += [p for p in old.get('points', []) if p.get('label') not in labels]
  seeds = list(sweep.seeds) + [s for s in old.get('seeds', []) if s not in sweep.seeds]
  created = old.get('created') or status.now()
  status.write_json(os.path.join(sweep.workdir, status.SWEEP_FILE), dict(
      config=sweep.config_file, base=sweep.base, seeds=seeds,
      overrides=_jsonable(sweep.common), metric=sweep.metric,
      description=sweep.description, points=points, command=list(argv), created=created,
      updated=status.now()))
  for run in runs:
    os.makedirs(run.dir, exist_ok=True)
    status.write_json(os.path.join(run.dir, status.POINT_FILE), dict(
        label=run.point.label, coords=dict(run.point.coords), seed=run.seed, base=run.base,
        overrides=_jsonable(run.overrides), launcher=launcher,
        command=f'cd {shlex.quote(configs.ROOT)} && {shlex.join(run.train_command())}'))


def write_results(sweep: Sweep) -> str:
  """WORKDIR/results.json and results.md of the finished runs; the table ('' if none)."""
  results = {}
  for run in sweep.runs:
    if status.is_finished(run.dir, run.num_steps):
      results[run.name] = dict(label=run.point.label, seed=run.seed,
                               coords=dict(run.point.coords), step=run.num_steps,
                               metrics=status.final_metrics(run.dir, run.num_steps))
  status.write_json(os.path.join(sweep.workdir, status.RESULTS_JSON), results)
  if not results:
    return ''
  [loaded] = report.load_dirs([sweep.workdir])  # The sweep's rows: points in order.
  metric = [loaded.metric] if loaded.metric and any(
      loaded.metric in r.values for r in loaded.rows) else []
  table = report.make_table(loaded.rows, metrics=metric)
  status.write_text(os.path.join(sweep.workdir, status.RESULTS_MD), table)
  return table


def _launcher(name: str, parallel: int | None, sweep: Sweep):
  if name == 'local':
    return launchers.Local(parallel)
  if name == 'tpu':
    return launchers.Tpu(parallel, sweep.base)
  if name == 'slurm':
    return launchers.Slurm(parallel, sweep.name)
  raise errors.UserError(f'--launcher={name}: choose one of {", ".join(launchers.LAUNCHERS)}')


def _dry_run(sweep: Sweep, runs: Sequence[Run], launcher) -> int:
  say(f'sweep {sweep.name}: {len(runs)} run(s) in {sweep.workdir}, launcher {launcher.name} '
      f'(dry run: nothing is launched)')
  for i, run in enumerate(runs):
    state = status.describe(run.dir, run.num_steps)
    if isinstance(launcher, launchers.Slurm):
      queued = state != 'finished' and launcher.queued(run)
      state = f'queued (job {queued[0]}, {queued[1]})' if queued else state
      argv, env = launcher.command(run)
    else:
      argv, env = launcher.command(run, launcher.slots[i % len(launcher.slots)])
    say(f'{run.name}: {state}')
    say(f'  cd {shlex.quote(configs.ROOT)} && {launchers.describe_command(argv, env)}')
  return 0


def _submit(sweep: Sweep, runs: Sequence[Run], launcher: launchers.Slurm) -> int:
  counts = {'finished': 0, 'queued': 0, 'submitted': 0}
  for run in runs:
    if status.is_finished(run.dir, run.num_steps):
      counts['finished'] += 1
      say(f'{run.name}: finished')
      continue
    queued = launcher.queued(run)
    if queued:
      counts['queued'] += 1
      say(f'{run.name}: queued as job {queued[0]} ({queued[1]}): not resubmitted')
      continue
    state = status.describe(run.dir, run.num_steps)
    say(f'{run.name}: submitted as job {launcher.submit(run)} ({state})')
    counts['submitted'] += 1
  say(f'sweep {sweep.name}: {counts["finished"]} finished, {counts["queued"]} already queued, '
      f'{counts["submitted"]} submitted; logs in RUN/{status.LOG}. Run the same command again '
      'to resubmit stopped or failed runs and to collect the results')
  return 0


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, config_file: str = '',
              launcher: str = 'local', parallel: int | None = None,
              only: Sequence[str] = (), dry_run: bool = False, fail_fast: bool = False,
              progress_every: float = 30.0, argv: Sequence[str] = ()) -> int:
  """Runs (or resumes, or submits) the sweep's unfinished runs; returns the exit status."""
  workdir = os.path.abspath(workdir)
  sweep = load(config, workdir, config_file)
  runs = select(sweep, only or ())
  impl = _launcher(launcher, parallel, sweep)
  old = check_unchanged(sweep)
  if dry_run:
    return _dry_run(sweep, runs, impl)
  os.makedirs(workdir, exist_ok=True)
  write_layout(sweep, runs, old, argv, impl.name)
  if isinstance(impl, launchers.Slurm):
    rc = _submit(sweep, runs, impl)
    _report(sweep)
    return rc
  result = schedule.Scheduler(runs, impl, metric=sweep.metric, fail_fast=fail_fast,
                              progress_every=progress_every).run()
  if result.interrupted:
    for run in result.still_running:
      say(f'still running on its TPU VM after the stop: {run.name} (see '
          f'{os.path.join(run.dir, status.REMOTE_STOP_FILE)})')
    say('interrupted: run the same command to resume')
    return result.exit_status
  _report(sweep)
  for run in result.failed:
    say(f'failed: {run.name} (log {os.path.join(run.dir, status.LOG)})')
  for run in result.stopped:
    say(f'stopped, resumable: {run.name} (run the same command to resume)')
  if result.skipped:
    say(f'not started after a failure (--fail_fast): '
        f'{", ".join(r.name for r in result.skipped)}')
  return 1 if result.failed or result.stopped or result.skipped else 0


def _report(sweep: Sweep) -> None:
  table = write_results(sweep)
  if table:
    say(f'\n{table}', end='')
    say(f'Wrote {os.path.join(sweep.workdir, status.RESULTS_MD)} and {status.RESULTS_JSON}')
