"""How a run is started: a local process, launch/tpu_pod.sh on a TPU VM of its own, or a
SLURM job (launch/slurm.sbatch). Local and TPU runs are blocking processes the runner
schedules (`slots`: one run at a time per slot); SLURM runs are submitted and left to the
queue."""

import os
import re
import shlex
import subprocess
import sys

from denseav_jax import errors
from denseav_jax.experiments.sweep import configs
from denseav_jax.experiments.sweep import status

LAUNCHERS = ('local', 'tpu', 'slurm')


def train_command(base: str, run_dir: str, flags: list[str], python: str = 'python'
                  ) -> list[str]:
  return [python, '-m', 'denseav_jax.train', '--config', base, '--workdir', run_dir, *flags]


class Local:
  """`parallel` training processes at once on this machine (sharing its accelerators)."""
  name = 'local'

  def __init__(self, parallel: int | None):
    self.parallel = 1 if parallel is None else parallel
    if self.parallel < 1:
      raise errors.UserError(f'--parallel={self.parallel} must be >= 1')
    self.slots = [None] * self.parallel

  def command(self, run, slot) -> tuple[list[str], dict[str, str]]:
    """(argv, environment variables set on top of the runner's) of one run."""
    del slot
    env = {}
    if self.parallel > 1 and 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in os.environ:
      env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / self.parallel:.3g}'
    return train_command(run.base, run.dir, run.flags, sys.executable), env


class Tpu:
  """launch/tpu_pod.sh per run, each running run on its own TPU VM of env TPU=a,b,..."""
  name = 'tpu'

  def __init__(self, parallel: int | None, base: str):
    names = [n.strip() for n in os.environ.get('TPU', '').split(',') if n.strip()]
    if not names:
      raise errors.UserError('--launcher tpu: set TPU to the TPU VM names, comma-separated '
                          '(TPU=vm1,vm2 ZONE=ZONE python -m denseav_jax.sweep ...)')
    if not os.environ.get('ZONE'):
      raise errors.UserError('--launcher tpu: ZONE is not set (the zone of the TPU VMs)')
    if os.path.isabs(base.partition(':')[0]):
      raise errors.UserError(f'config.base={base}: --launcher tpu needs a config inside the '
                          'repository (launch/tpu_pod.sh copies the repository to the workers)')
    self.parallel = len(names) if parallel is None else parallel
    if not 1 <= self.parallel <= len(names):
      raise errors.UserError(f'--parallel={self.parallel}: TPU={",".join(names)} names '
                          f'{len(names)} TPU VM(s) and each running run needs its own: use '
                          f'--parallel between 1 and {len(names)}')
    self.slots = names[:self.parallel]

  def command(self, run, slot) -> tuple[list[str], dict[str, str]]:
    return (['bash', os.path.join('launch', 'tpu_pod.sh'), run.dir, *run.flags],
            {'TPU': slot, 'CONFIG': run.base})

  def stop_command(self, run, slot) -> tuple[list[str], dict[str, str]]:
    """The graceful stop of a running run: tpu_pod.sh's STOP mode SIGTERMs the trainers on
    every worker of its VM, waits for them to save (STOP_WAIT, from the environment) and
    prints a line per worker (parse_stop)."""
    return (['bash', os.path.join('launch', 'tpu_pod.sh'), run.dir],
            {'TPU': slot, 'CONFIG': run.base, 'STOP': '1'})


_STOP_LINE = re.compile(r'^tpu_pod\.sh: stop: (\S+): (.+?)\s*$')
_STEP = re.compile(r'\bat step (\d+)')


def parse_stop(text: str) -> list[dict]:
  """tpu_pod.sh STOP's output -> [{worker, state, step, text}] per worker line; state is
  'saved', 'exited', 'still running' or 'gone' (step: the newest checkpoint, or None)."""
  workers = []
  for line in text.splitlines():
    m = _STOP_LINE.match(line.strip())
    if not m:
      continue
    what = m.group(2)
    state = next((s for s in ('saved', 'exited', 'still running', 'gone')
                  if what.startswith(s)), what)
    step = _STEP.search(what)
    workers.append(dict(worker=m.group(1), state=state,
                        step=int(step.group(1)) if step else None, text=what))
  return workers


def _tool(var: str, default: str) -> list[str]:
  return shlex.split(os.environ.get(var) or default)


def _call(argv: list[str], env=None) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(argv, cwd=configs.ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
  except FileNotFoundError:
    raise errors.UserError(f'{argv[0]} not found: run the sweep on a SLURM login node, or set '
                        'SBATCH / SQUEUE to the commands') from None
  except subprocess.TimeoutExpired:
    raise errors.UserError(f'{shlex.join(argv)} did not answer in 120 s') from None


class Slurm:
  """sbatch per unfinished run (not waiting for it); a run whose recorded job is still in
  squeue is left alone."""
  name = 'slurm'

  def __init__(self, parallel: int | None, sweep_name: str):
    if parallel is not None:
      raise errors.UserError('--parallel does not apply to --launcher slurm: every run is '
                          'submitted at once and SLURM schedules them')
    self.sweep_name = sweep_name

  def command(self, run) -> tuple[list[str], dict[str, str]]:
    argv = [*_tool('SBATCH', 'sbatch'), '--parsable',
            f'--job-name=denseav-{self.sweep_name}-{run.name}',
            f'--output={os.path.join(run.dir, status.LOG)}',
            *shlex.split(os.environ.get('SBATCH_FLAGS', '')),
            os.path.join('launch', 'slurm.sbatch'), run.dir, *run.flags]
    return argv, {'CONFIG': run.base}

  def queued(self, run) -> tuple[str, str] | None:
    """(job id, squeue state) of the run's recorded job while squeue lists it."""
    job = status.read_json(os.path.join(run.dir, status.SLURM_FILE))
    if not job or not job.get('job_id'):
      return None
    job_id = str(job['job_id'])
    r = _call([*_tool('SQUEUE', 'squeue'), '-h', '-j', job_id, '-o', '%T'])
    state = r.stdout.strip().splitlines()
    return (job_id, state[0].strip()) if r.returncode == 0 and state else None

  def submit(self, run) -> str:
    argv, extra = self.command(run)
    r = _call(argv, env={**os.environ, **extra})
    job_id = r.stdout.strip().split(';')[0].strip()
    if r.returncode != 0 or not job_id:
      detail = [l.strip() for l in (r.stderr.strip() or r.stdout.strip()).splitlines()]
      raise errors.UserError(f'sbatch failed for {run.name} (exit {r.returncode}): '
                          f'{" / ".join(l for l in detail if l) or "no output"}')
    status.write_json(os.path.join(run.dir, status.SLURM_FILE),
                      {'job_id': job_id, 'submitted': status.now(), 'command': argv,
                       'env': extra})
    return job_id


def describe_command(argv: list[str], env: dict[str, str]) -> str:
  return ' '.join([f'{k}={shlex.quote(v)}' for k, v in env.items()] + [shlex.join(argv)])
