"""What the sweep knows about a run from its folder: finished (its final metrics.json),
how far it trained (train_metrics.jsonl), its last checkpoint; and the sweep's JSON files."""

import json
import os
import time

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.trainer import progress

LOG = 'train.log'
POINT_FILE = 'point.json'
SWEEP_FILE = 'sweep.json'
RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
SLURM_FILE = 'slurm_job.json'
# A remote run's stop (the TPU launcher): the stop command's output, and what each worker's
# trainer did (saved at step N, exited, still running, gone).
REMOTE_STOP_LOG = 'remote_stop.log'
REMOTE_STOP_FILE = 'remote_stop.json'


def final_metrics_path(run_dir: str, num_steps: int) -> str:
  return os.path.join(run_dir, 'eval', str(num_steps), 'metrics.json')


def is_finished(run_dir: str, num_steps: int) -> bool:
  """Trained to the end and evaluated there (the trainer's eval_at_end)."""
  return os.path.isfile(final_metrics_path(run_dir, num_steps))


def final_metrics(run_dir: str, num_steps: int) -> dict[str, float]:
  with open(final_metrics_path(run_dir, num_steps), encoding='utf-8') as f:
    return {k: float(v) for k, v in json.load(f).items()}


def last_step(run_dir: str) -> int | None:
  """The newest step in RUN/train_metrics.jsonl (read from its end), None if none yet."""
  path = os.path.join(run_dir, progress.METRICS_FILE)
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(f.tell() - 8192, 0))
      lines = f.read().decode('utf-8', 'replace').splitlines()
  except OSError:
    return None
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      continue
  return None


def last_checkpoint(run_dir: str) -> int | None:
  root = os.path.join(run_dir, 'checkpoints')
  steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
  return max(steps) if steps else None


def describe(run_dir: str, num_steps: int) -> str:
  """'finished', 'new' or 'resumes from step N' (before launching)."""
  if is_finished(run_dir, num_steps):
    return 'finished'
  ckpt = last_checkpoint(run_dir)
  return f'resumes from step {ckpt}' if ckpt is not None else 'new'


def headline(metrics: dict[str, float], metric: str = '') -> str:
  """The sweep's metric if set, else a few of the report's headline keys."""
  if metric:
    value = metrics.get(metric)
    return f'{metric}=' + ('missing' if value is None else f'{value:.3f}')
  wanted = ('advanced_ap', 'basic_ap', 'a2i_r1', 'i2a_r1', 'ap_dis')
  shown, seen = [], set()
  for suffix in wanted:
    for key in metrics:
      name, _, s = key.rpartition('/')
      if s == suffix and not (suffix == 'basic_ap' and (name, 'advanced_ap') in seen):
        shown.append(key)
        seen.add((name, suffix))
  return ' '.join(f'{k}={metrics[k]:.3f}' for k in shown[:4])


def last_line(path: str) -> str:
  """The last non-empty line of a log (the error of a failed run), '' if none."""
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(f.tell() - 4096, 0))
      lines = [l.strip() for l in f.read().decode('utf-8', 'replace').splitlines()]
  except OSError:
    return ''
  lines = [l for l in lines if l and not l.startswith('--- denseav_jax.sweep')]
  return lines[-1] if lines else ''


def write_json(path: str, data) -> None:
  write_text(path, json.dumps(data, indent=1, default=str) + '\n')


def write_text(path: str, text: str) -> None:
  """Atomically (a temporary file renamed), so a reader never sees half of it."""
  try:
    io_lib.write_text(path, text)
  except OSError as e:
    raise errors.UserError(f'cannot write {path} ({e.strerror})') from None


def read_json(path: str):
  """The JSON file's content, None if it does not exist; UserError if it is not JSON."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f'{path}: cannot read it ({e}); move it away to start over') from None


def now() -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S')
