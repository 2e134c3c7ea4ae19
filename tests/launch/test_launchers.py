"""The launchers (launch/local_multiprocess.sh, tpu_pod.sh, slurm.sbatch) and the multi-host
layout they rely on (denseav_jax.parallel.distributed.resolve).

The launchers run in their dry-run mode, or with fake `python`, `gcloud`, `srun`, `scancel`
and `scontrol` programs on PATH: no real training, no jax.distributed (test_multiprocess.py
runs the real thing), no cloud, no cluster.
"""

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import pytest

from conftest import ROOT, subprocess_env
from denseav_jax.parallel import distributed
from denseav_jax.parallel.distributed import first_slurm_host, resolve

LAUNCH = os.path.join(ROOT, 'launch')
# Variables of the machine running the tests that would change what the launchers do.
_CLEAR = ('TPU', 'ZONE', 'PROJECT', 'CONFIG', 'DRY_RUN', 'N', 'DEVICES', 'PORT', 'PLATFORM',
          'SKIP_COPY', 'SKIP_INSTALL', 'DETACH', 'STOP', 'SSH_FLAGS', 'GCLOUD', 'REMOTE_DIR',
          'REPO', 'SRUN_FLAGS', 'REQUEUE', 'CUDA_VISIBLE_DEVICES', 'KILL_AFTER', 'GRACE',
          'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
          'JAX_COORDINATOR_PORT', 'STOP_WAIT', 'FAKE_WORKERS', 'IGNORE_TERM', 'FAKE_DIR')


def _env(**extra) -> dict[str, str]:
  """conftest.subprocess_env without the compilation cache (the launchers start
  multi-process jobs), the variables above and SLURM's; `extra` added."""
  env = {k: v for k, v in subprocess_env(cache=False).items()
         if k not in _CLEAR and not k.startswith('SLURM_')}
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _bash(script, *args, timeout=30, **env):
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args], cwd=ROOT,
                        env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _executable(path, text):
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


def _one_error_line(r, script):
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'{script}: error: '), r.stderr
  assert not r.stdout
  return lines[0]


def _wait_for(predicate, timeout=20.0):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def _gone(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def _default_signals():
  """In the launcher's process: SIGINT / SIGTERM at their defaults and unblocked, whatever
  the test process inherited or a library in it set (bash cannot trap a signal that was
  ignored when it started, and a blocked one would never arrive)."""
  signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Launcher:
  """A launcher started in its own session, so a hung one is stopped by its process group."""

  def __init__(self, args, env):
    self.p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=_default_signals)

  def finish(self, timeout=60):
    try:
      out, err = self.p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.p.pid, signal.SIGKILL)
      self.p.communicate()
      pytest.fail('the launcher hung')
    return self.p.returncode, out, err


# --- local_multiprocess.sh -------------------------------------------------------------------

OVERRIDES = ['--config.num_train_steps=3', '--config.name=a b']


@pytest.mark.subprocess
def test_local_dry_run_prints_one_command_per_process(tmp_path):
  workdir = tmp_path / 'run'
  r = _bash('local_multiprocess.sh', str(workdir), *OVERRIDES, N=3, DEVICES=2, PORT=23456,
            DRY_RUN=1, XLA_FLAGS='--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=8')
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    words = shlex.split(line)
    # The caller's other XLA flags are kept; the device count is DEVICES.
    assert words[:2] == ['XLA_FLAGS=--xla_cpu_max_isa=AVX2 '
                         '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS=cpu']
    assert words[2:5] == ['python', '-m', 'denseav_jax.train']
    assert words[words.index('--config') + 1] == 'configs/synthetic.py:runlocal'
    assert words[words.index('--workdir') + 1] == str(workdir)
    for flag in ('--distributed', '--cluster=explicit',
                 '--coordinator_address=localhost:23456', '--num_processes=3',
                 f'--process_id={i}', *OVERRIDES):
      assert flag in words, (flag, line)
    assert words[-3:] == ['>', str(workdir / f'process_{i}.log'), '2>&1']
  assert not workdir.exists()  # A dry run creates nothing.


@pytest.mark.subprocess
def test_local_dry_run_gpu_slices(tmp_path):
  r = _bash('local_multiprocess.sh', str(tmp_path), N=2, DEVICES=2, PORT=1234, PLATFORM='gpu',
            CUDA_VISIBLE_DEVICES='3,4,5,6', CONFIG='configs/denseav.py', DRY_RUN=1)
  assert r.returncode == 0, r.stderr
  lines = [shlex.split(l) for l in r.stdout.strip().splitlines()]
  assert [l[:2] for l in lines] == [['CUDA_VISIBLE_DEVICES=3,4', 'JAX_PLATFORMS=cuda'],
                                    ['CUDA_VISIBLE_DEVICES=5,6', 'JAX_PLATFORMS=cuda']]
  assert all('configs/denseav.py' in l and not any('XLA_FLAGS' in w for w in l)
             for l in lines)


@pytest.mark.parametrize('env, needle', [
    (dict(), 'WORKDIR missing'),
    (dict(N='0'), 'N=0'),
    (dict(DEVICES='x'), 'DEVICES=x'),
    (dict(PORT='70000'), 'PORT=70000'),
    (dict(PLATFORM='tpu'), 'PLATFORM=tpu'),
    (dict(PLATFORM='gpu', CUDA_VISIBLE_DEVICES='0,1,2', N='2', DEVICES='2'), 'needs 4 GPUs'),
])
@pytest.mark.subprocess
def test_local_errors_are_one_line(tmp_path, env, needle):
  args = [] if needle == 'WORKDIR missing' else [str(tmp_path)]
  r = _bash('local_multiprocess.sh', *args, DRY_RUN=1, **env)
  assert needle in _one_error_line(r, 'local_multiprocess.sh')
  assert r.returncode == 2


FAKE_TRAINER = r'''
  #!/usr/bin/env bash
  # A stand-in for `python -m denseav_jax.train`, steered by FAKE_MODE.
  for a in "$@"; do case "$a" in --process_id=*) id="${a#*=}" ;; esac; done
  echo "fake $id pid $$ pgid $(ps -o pgid= -p $$ | tr -d ' ')"
  echo "I0101 00:00:00.0 absl info line"
  echo "W0101 00:00:00.0 absl warning line"
  echo "$$" > "$FAKE_DIR/pid_$id"
  case "$FAKE_MODE" in
    ok) echo "step 1/1 loss 1.0000"; exit 0 ;;
    fail)  # Process 1 fails; the others would wait for it forever.
      if [ "$id" = 1 ]; then sleep 0.3; echo "boom" >&2; exit 3; fi
      trap 'echo "got SIGTERM"; exit 0' TERM
      while :; do sleep 0.1 & wait $!; done ;;
    deaf)  # Process 1 fails; the others ignore SIGTERM (stuck in a collective).
      if [ "$id" = 1 ]; then sleep 0.3; exit 4; fi
      trap '' TERM
      while :; do sleep 0.1; done ;;
    term)  # Like the trainer: SIGTERM -> finish the step, save, exit 0.
      trap 'echo "saved a checkpoint"; exit 0' TERM
      touch "$FAKE_DIR/ready_$id"
      while :; do sleep 0.1 & wait $!; done ;;
  esac
'''


def _fake_trainer_env(tmp_path, mode, **extra):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  _executable(bin_dir / 'python', FAKE_TRAINER)
  return _env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', VIRTUAL_ENV=str(tmp_path),
              FAKE_DIR=str(tmp_path), FAKE_MODE=mode, N=3, DEVICES=1, **extra)


def _pids(tmp_path, n=3):
  return [int((tmp_path / f'pid_{i}').read_text()) for i in range(n)]


@pytest.mark.subprocess
def test_local_runs_processes_in_own_groups_and_prints_log_0(tmp_path):
  workdir = tmp_path / 'run'
  r = subprocess.run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), str(workdir)],
                     cwd=ROOT, env=_fake_trainer_env(tmp_path, 'ok'), capture_output=True,
                     text=True, timeout=30)
  assert r.returncode == 0, r.stderr
  assert 'step 1/1 loss 1.0000' in r.stdout and 'fake 0 ' in r.stdout
  assert 'absl' not in r.stdout  # absl I/W lines are left out.
  for i in range(3):
    first = (workdir / f'process_{i}.log').read_text().splitlines()[0].split()
    assert first[1] == str(i) and first[3] == first[5]  # pid == pgid: its own group.


@pytest.mark.subprocess
@pytest.mark.parametrize('mode, status', [('fail', 3), ('deaf', 4)])
def test_local_failure_stops_the_others(tmp_path, mode, status):
  workdir = tmp_path / 'run'
  t0 = time.time()
  launcher = _Launcher(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), str(workdir)],
                       _fake_trainer_env(tmp_path, mode, KILL_AFTER=1))
  rc, out, err = launcher.finish()
  assert rc == status, err
  assert time.time() - t0 < 15
  assert 'process 1 failed (exit' in err and 'process 1 exited with status' in err
  assert 'Killed' not in err  # No notices from bash itself.
  if mode == 'fail':
    assert 'boom' in err  # The failing process's log tail.
    assert 'got SIGTERM' in (workdir / 'process_0.log').read_text()
  else:
    assert 'killing them' in err
  assert _wait_for(lambda: all(_gone(p) for p in _pids(tmp_path)), 5)


@pytest.mark.subprocess
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_local_forwards_signals(tmp_path, sig):
  workdir = tmp_path / 'run'
  launcher = _Launcher(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), str(workdir)],
                       _fake_trainer_env(tmp_path, 'term'))
  assert _wait_for(lambda: all((tmp_path / f'ready_{i}').exists() for i in range(3)))
  launcher.p.send_signal(sig)
  rc, out, err = launcher.finish()
  assert rc == 0, err
  assert f'{sig.name} received' in err
  for i in range(3):
    assert 'saved a checkpoint' in (workdir / f'process_{i}.log').read_text()
  assert 'saved a checkpoint' in out  # Process 0's log.
  assert all(_gone(p) for p in _pids(tmp_path))


# --- tpu_pod.sh ------------------------------------------------------------------------------

def _remote(line: str) -> str:
  words = shlex.split(line)
  return words[words.index('--command') + 1]


@pytest.mark.subprocess
def test_tpu_dry_run_copies_installs_and_trains_on_all_workers():
  r = _bash('tpu_pod.sh', '/mnt/shared/runs/denseav', *OVERRIDES, TPU='my-pod',
            ZONE='us-central2-b', PROJECT='my-proj', DRY_RUN=1)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 5, r.stdout
  archive, scp, extract, install, train = lines
  assert 'git' in archive and 'ls-files' in archive and 'tar -czf' in archive
  for line in lines[1:]:
    assert line.startswith('gcloud compute tpus tpu-vm ')
    for flag in ('--zone=us-central2-b', '--worker=all', '--project=my-proj'):
      assert flag in shlex.split(line)
  assert 'tpu-vm scp' in scp and 'my-pod:denseav-jax-code.tar.gz' in scp
  assert 'tpu-vm ssh my-pod' in extract and 'tar -xzf' in _remote(extract)
  assert 'bash launch/setup_env.sh tpu' in _remote(install)
  assert 'tpu-vm ssh my-pod' in train
  remote = _remote(train)
  assert remote.startswith('cd denseav-jax && source .venv/bin/activate')
  argv = shlex.split(remote.split('exec ', 1)[1])
  assert argv[:3] == ['python', '-m', 'denseav_jax.train']
  assert argv[argv.index('--config') + 1] == 'configs/denseav.py'
  assert argv[argv.index('--workdir') + 1] == '/mnt/shared/runs/denseav'
  for flag in ('--distributed', '--cluster=tpu', *OVERRIDES):
    assert flag in argv
  assert not r.stderr  # A shared absolute WORKDIR draws no warning.


@pytest.mark.subprocess
def test_tpu_dry_run_variants():
  base = dict(TPU='pod', ZONE='z', DRY_RUN=1)
  r = _bash('tpu_pod.sh', '/mnt/shared/x', SKIP_COPY=1, SKIP_INSTALL=1,
            CONFIG='configs/synthetic.py:runlocal', SSH_FLAGS='--internal-ip', **base)
  assert r.returncode == 0, r.stderr
  [line] = r.stdout.strip().splitlines()
  assert '--internal-ip' in shlex.split(line) and '--project' not in line
  assert '--config configs/synthetic.py:runlocal' in _remote(line)
  r = _bash('tpu_pod.sh', '/mnt/shared/r', SKIP_COPY=1, SKIP_INSTALL=1, DETACH=1, **base)
  remote = _remote(r.stdout.strip())
  assert 'setsid nohup python -m denseav_jax.train' in remote and 'train.log' in remote
  r = _bash('tpu_pod.sh', STOP=1, **base)
  before, line = r.stdout.strip().splitlines()  # Every worker's newest checkpoint, then the stop.
  assert 'ckpt > stop.before' in _remote(before)
  remote = _remote(line)
  assert '--worker=all' in line and 'pid=$(cat train.pid' in remote
  assert 'kill -TERM "$pid"' in remote and '-lt 600 ]' in remote  # STOP_WAIT's default.
  assert 'wd=$(cat train.workdir' in remote
  r = _bash('tpu_pod.sh', '/mnt/shared/r', STOP=1, STOP_WAIT=5, **base)
  remote = _remote(r.stdout.strip().splitlines()[-1])
  assert 'wd=/mnt/shared/r;' in remote and '-lt 5 ]' in remote


@pytest.mark.parametrize('env, args, needle', [
    (dict(ZONE='z'), ['/mnt/shared/r'], 'TPU is not set'),
    (dict(TPU='pod'), ['/mnt/shared/r'], 'ZONE is not set'),
    (dict(TPU='pod', ZONE='z'), [], 'WORKDIR missing'),
    (dict(TPU='pod', ZONE='z', CONFIG='configs/nope.py'), ['/mnt/shared/r'], 'configs/nope.py'),
    (dict(TPU='pod', ZONE='z', CONFIG='/abs/c.py'), ['/mnt/shared/r'], 'relative'),
    (dict(TPU='pod', ZONE='z', GCLOUD='/nonexistent/gcloud'), ['/mnt/shared/r'], 'not found'),
    (dict(TPU='pod', ZONE='z', REMOTE_DIR='a dir'), ['/mnt/shared/r'], 'REMOTE_DIR'),
    (dict(TPU='pod', ZONE='z'), ['runs/x'], 'absolute path'),  # Worker-local: refused.
    (dict(TPU='pod', ZONE='z'), ['gs://b/r'], 'gcsfuse'),
])
@pytest.mark.subprocess
def test_tpu_errors_are_one_line(env, args, needle):
  r = _bash('tpu_pod.sh', *args, **env)
  assert needle in _one_error_line(r, 'tpu_pod.sh')


FAKE_GCLOUD = r'''
  #!/usr/bin/env bash
  # A stand-in for gcloud with two "workers" (home directories under $FAKE_DIR).
  printf '%s\n' "$*" >> "$FAKE_DIR/calls"
  [ "$1 $2 $3" = "compute tpus tpu-vm" ] || exit 9
  sub="$4"; shift 4
  command=""
  args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --command) command="$2"; shift 2 ;;
      --*) shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  for w in w0 w1; do
    home="$FAKE_DIR/$w"
    mkdir -p "$home"
    if [ "$sub" = scp ]; then
      cp "${args[0]}" "$home/${args[1]#*:}"
    else
      (cd "$home" && HOME="$home" bash -c "$command") || exit $?
    fi
  done
'''

FAKE_ACTIVATE = r'''
  export PATH="$FAKE_DIR/bin:$PATH"
'''


@pytest.mark.subprocess
def test_tpu_remote_commands_work_on_fake_workers(tmp_path):
  """Runs the launcher's remote commands in two fake worker homes: copy, then train."""
  gcloud = _executable(tmp_path / 'gcloud', FAKE_GCLOUD)
  (tmp_path / 'bin').mkdir()
  _executable(tmp_path / 'bin' / 'python', '''
      #!/usr/bin/env bash
      printf '%s\\n' "$@" > "$HOME/train_args"
      ''')
  for w in ('w0', 'w1'):  # An installed worker with a stale file from an older copy.
    code = tmp_path / w / 'denseav-jax'
    (code / '.venv' / 'bin').mkdir(parents=True)
    (code / '.venv' / 'bin' / 'activate').write_text(FAKE_ACTIVATE)
    (code / 'stale.py').write_text('')
    (code / '.denseav-jax-remote').write_text('')  # Made by an earlier tpu_pod.sh copy.
  r = _bash('tpu_pod.sh', '/mnt/shared/run', '--config.seed=3', TPU='pod', ZONE='z',
            GCLOUD=str(gcloud), FAKE_DIR=str(tmp_path), SKIP_INSTALL=1, timeout=60)
  assert r.returncode == 0, r.stderr
  assert len((tmp_path / 'calls').read_text().splitlines()) == 3  # scp, extract, train.
  for w in ('w0', 'w1'):
    code = tmp_path / w / 'denseav-jax'
    assert (code / 'denseav_jax' / 'parallel' / 'distributed.py').is_file()
    assert (code / 'setup.cfg').is_file() and (code / 'launch' / 'tpu_pod.sh').is_file()
    assert not (code / 'stale.py').exists() and (code / '.venv' / 'bin' / 'activate').exists()
    assert not (tmp_path / w / 'denseav-jax-code.tar.gz').exists()
    args = (tmp_path / w / 'train_args').read_text().split('\n')
    assert args[:4] == ['-m', 'denseav_jax.train', '--config', 'configs/denseav.py']
    assert {'--distributed', '--cluster=tpu', '--config.seed=3', '/mnt/shared/run'} <= set(args)
    assert (code / 'train.pid').read_text().strip().isdigit()


@pytest.mark.subprocess
def test_tpu_archive_leaves_out_ignored_files(tmp_path):
  gcloud = _executable(tmp_path / 'gcloud', '''
      #!/usr/bin/env bash
      for a in "$@"; do case "$a" in *.tar.gz) [ -f "$a" ] && cp "$a" "$FAKE_DIR/code.tar.gz" ;; esac; done
      exit 0
      ''')
  r = _bash('tpu_pod.sh', '/mnt/shared/r', TPU='pod', ZONE='z', GCLOUD=str(gcloud),
            FAKE_DIR=str(tmp_path), SKIP_INSTALL=1, timeout=60)
  assert r.returncode == 0, r.stderr
  with tarfile.open(tmp_path / 'code.tar.gz') as tar:
    names = tar.getnames()
  assert 'denseav_jax/train.py' in names and 'launch/setup_env.sh' in names
  assert not [n for n in names if n.startswith(('.venv', 'runs/', '.git/'))
              or '__pycache__' in n]


@pytest.mark.subprocess
def test_tpu_failing_step_stops_with_its_status(tmp_path):
  gcloud = _executable(tmp_path / 'gcloud', '#!/usr/bin/env bash\nexit 5\n')
  r = _bash('tpu_pod.sh', '/mnt/shared/r', TPU='pod', ZONE='z', GCLOUD=str(gcloud),
            SKIP_COPY=1)
  assert r.returncode == 5
  assert r.stderr.strip().splitlines()[-1].startswith('tpu_pod.sh: error: exit status 5 from')


# Stopping: tpu_pod.sh STOP=1, alone and as `python -m denseav_jax.sweep --launcher tpu`
# stops its runs. The fake gcloud runs each worker's command at once (in the background, as
# gcloud ssh --worker=all does), in a home of its own with a `hostname` of its own.
FAKE_GCLOUD_WORKERS = r'''
  #!/usr/bin/env bash
  printf '%s\n' "$*" >> "$FAKE_DIR/calls"
  [ "$1 $2 $3" = "compute tpus tpu-vm" ] || exit 9
  sub="$4"; shift 4
  command=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --command) command="$2"; shift 2 ;;
      *) shift ;;
    esac
  done
  [ "$sub" = ssh ] || exit 0
  pids=()
  for w in ${FAKE_WORKERS:-w0 w1}; do
    home="$FAKE_DIR/$w"
    (cd "$home" && HOME="$home" PATH="$home/bin:$PATH" exec bash -c "$command") &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  exit $rc
'''

# A trainer: runs until SIGTERM, then saves checkpoint 7 of its --workdir (the shared
# filesystem) and exits 0; with IGNORE_TERM it does not stop.
FAKE_TPU_TRAINER = r'''
  #!/usr/bin/env bash
  wd=""
  while [ $# -gt 0 ]; do [ "$1" = --workdir ] && wd="$2"; shift; done
  if [ -n "${IGNORE_TERM:-}" ]; then trap '' TERM; else
    trap 'mkdir -p "$wd/checkpoints/7"; echo "$(hostname): saved step 7"; exit 0' TERM
  fi
  echo "$$" > "$HOME/trainer.pid"
  while true; do sleep 0.05; done
'''


def _tpu_workers(tmp_path, workers=('w0', 'w1')):
  """Worker homes with an installed checkout (a .venv whose python is FAKE_TPU_TRAINER) and a
  hostname of their own; the fake gcloud. Returns the gcloud path."""
  gcloud = _executable(tmp_path / 'gcloud', FAKE_GCLOUD_WORKERS)
  (tmp_path / 'bin').mkdir(exist_ok=True)
  _executable(tmp_path / 'bin' / 'python', FAKE_TPU_TRAINER)
  for w in workers:
    code = tmp_path / w / 'denseav-jax'
    (code / '.venv' / 'bin').mkdir(parents=True)
    (code / '.venv' / 'bin' / 'activate').write_text(FAKE_ACTIVATE)
    (tmp_path / w / 'bin').mkdir()
    _executable(tmp_path / w / 'bin' / 'hostname', f'#!/usr/bin/env bash\necho {w}\n')
  return gcloud


def _trainer_pids(tmp_path, workers=('w0', 'w1')):
  files = [tmp_path / w / 'trainer.pid' for w in workers]
  assert _wait_for(lambda: all(f.exists() and f.read_text().strip() for f in files), 30)
  return [int(f.read_text()) for f in files]


def _kill_left(pids):
  for pid in pids:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


@pytest.mark.subprocess
def test_tpu_stop_waits_for_the_trainers_and_says_what_each_did(tmp_path):
  gcloud = _tpu_workers(tmp_path, ('w0', 'w1', 'w2'))
  workdir = tmp_path / 'shared' / 'run'
  (workdir / 'checkpoints' / '3').mkdir(parents=True)  # Saved before the stop.
  env = dict(TPU='pod', ZONE='z', GCLOUD=str(gcloud), FAKE_DIR=str(tmp_path), SKIP_COPY=1,
             SKIP_INSTALL=1, FAKE_WORKERS='w0 w1')
  train = _Launcher(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), str(workdir)], _env(**env))
  pids = _trainer_pids(tmp_path)
  try:
    for w in ('w0', 'w1'):
      assert (tmp_path / w / 'denseav-jax' / 'train.workdir').read_text().strip() == str(workdir)
    # w2 runs nothing: gone. No WORKDIR given: each worker reads the one it recorded.
    r = _bash('tpu_pod.sh', STOP=1, STOP_WAIT=30, timeout=60,
              **{**env, 'FAKE_WORKERS': 'w0 w1 w2'})
    assert r.returncode == 0, r.stderr
    lines = sorted(l for l in r.stdout.splitlines() if l.startswith('tpu_pod.sh: stop:'))
    assert lines == ['tpu_pod.sh: stop: w0: saved at step 7',
                     'tpu_pod.sh: stop: w1: saved at step 7',
                     'tpu_pod.sh: stop: w2: gone'], r.stdout
    assert all(_wait_for(lambda p=p: _gone(p)) for p in pids)
    rc, out, err = train.finish()
    assert rc == 0, err  # The trainers exited 0, so did the training's ssh and the launcher.
    assert 'w0: saved step 7' in out and 'w1: saved step 7' in out
    # Stopped again: nothing runs any more.
    r = _bash('tpu_pod.sh', str(workdir), STOP=1, **env)
    assert sorted(r.stdout.strip().splitlines()) == ['tpu_pod.sh: stop: w0: gone',
                                                     'tpu_pod.sh: stop: w1: gone']
  finally:
    _kill_left(pids)

  # A trainer that does not stop in STOP_WAIT: still running; it is not killed.
  (tmp_path / 'w0' / 'trainer.pid').unlink()
  train = _Launcher(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), str(workdir)],
                    _env(**{**env, 'FAKE_WORKERS': 'w0'}, IGNORE_TERM=1))
  pids = _trainer_pids(tmp_path, ('w0',))
  try:
    r = _bash('tpu_pod.sh', str(workdir), STOP=1, STOP_WAIT=1, timeout=60,
              **{**env, 'FAKE_WORKERS': 'w0'})
    [line] = r.stdout.strip().splitlines()
    assert line.startswith('tpu_pod.sh: stop: w0: still running (pid ')
    assert not _gone(pids[0])
  finally:
    _kill_left(pids)
    train.finish()
  r = _bash('tpu_pod.sh', STOP=1, STOP_WAIT='soon', TPU='pod', ZONE='z')
  assert 'STOP_WAIT=soon' in _one_error_line(r, 'tpu_pod.sh')


@pytest.mark.subprocess
def test_sweep_stop_reaches_the_tpu_trainers_and_records_them(tmp_path, monkeypatch, capsys):
  """SIGINT to a sweep on --launcher tpu: tpu_pod.sh STOP for the running run, its remote
  trainers save and exit, RUN/remote_stop.json and the log say so, the run is stopped,
  resumable; nothing else is started."""
  from denseav_jax.experiments.sweep import launchers  # pylint: disable=g-import-not-at-top
  from denseav_jax.experiments.sweep import runner  # pylint: disable=g-import-not-at-top
  from denseav_jax.experiments.sweep import schedule  # pylint: disable=g-import-not-at-top
  from denseav_jax.experiments.sweep import spec  # pylint: disable=g-import-not-at-top
  from denseav_jax.experiments.sweep import status  # pylint: disable=g-import-not-at-top
  gcloud = _tpu_workers(tmp_path)
  for k in _CLEAR:
    monkeypatch.delenv(k, raising=False)
  for k, v in dict(TPU='vm-a', ZONE='z', GCLOUD=str(gcloud), FAKE_DIR=str(tmp_path),
                   SKIP_COPY=1, SKIP_INSTALL=1, STOP_WAIT=30).items():
    monkeypatch.setenv(k, str(v))
  sweep = spec.sweep_config(base='configs/synthetic.py:runlocal',
                            points=spec.axis('x', {'a': {}, 'b': {}}), seeds=(0,),
                            overrides={'num_train_steps': 4})
  runs = runner.load(sweep, str(tmp_path / 'sweep')).runs
  launcher = launchers.Tpu(1, runs[0].base)
  pids = []

  def interrupt():
    try:
      pids.extend(_trainer_pids(tmp_path))
    finally:  # Always: the scheduler must not wait for the fake trainers forever.
      os.kill(os.getpid(), signal.SIGINT)

  thread = threading.Thread(target=interrupt, daemon=True)
  thread.start()
  try:
    result = schedule.Scheduler(runs, launcher, poll_s=0.05, stop_grace_s=20).run()
  finally:
    thread.join(5)
    _kill_left(pids)
  assert result.interrupted == signal.SIGINT
  assert [r.name for r in result.stopped] == ['a_seed0'] and not result.still_running
  assert [r.name for r in result.skipped] == ['b_seed0']
  run_dir = runs[0].dir
  assert status.last_checkpoint(run_dir) == 7
  record = status.read_json(os.path.join(run_dir, status.REMOTE_STOP_FILE))
  assert sorted((w['worker'], w['state'], w['step']) for w in record['workers']) == [
      ('w0', 'saved', 7), ('w1', 'saved', 7)]
  assert record['slot'] == 'vm-a' and record['exit_status'] == 0
  assert result.remote['a_seed0'] == record['workers']
  with open(os.path.join(run_dir, status.LOG)) as f:
    log = f.read()
  assert 'stopping the remote trainers: TPU=vm-a' in log and 'STOP=1' in log
  assert 'remote trainers: w' in log and 'saved step 7' in log  # The trainers' own output.
  out = capsys.readouterr().out
  assert re.search(r'a_seed0 on vm-a: w[01] saved at step 7; w[01] saved at step 7', out)
  assert re.search(r'stopped a_seed0 after \d+ s \(checkpoint at step 7\): resumable', out)
  assert all(_gone(p) for p in pids)


def test_parse_stop_lines():
  from denseav_jax.experiments.sweep import launchers  # pylint: disable=g-import-not-at-top
  text = ('+ gcloud compute tpus tpu-vm ssh pod ...\n'
          'tpu_pod.sh: stop: t1v-0: saved at step 40\n'
          'tpu_pod.sh: stop: t1v-1: exited at step 35\n'
          'tpu_pod.sh: stop: t1v-2: still running (pid 12, 600 s after SIGTERM)\n'
          'tpu_pod.sh: stop: t1v-3: gone\n'
          'tpu_pod.sh: stop: t1v-4: exited without a checkpoint\n')
  assert [(w['worker'], w['state'], w['step']) for w in launchers.parse_stop(text)] == [
      ('t1v-0', 'saved', 40), ('t1v-1', 'exited', 35), ('t1v-2', 'still running', None),
      ('t1v-3', 'gone', None), ('t1v-4', 'exited', None)]


# --- slurm.sbatch ----------------------------------------------------------------------------

@pytest.mark.subprocess
def test_slurm_dry_run_prints_header_and_srun():
  r = _bash('slurm.sbatch', '/shared/runs/denseav', *OVERRIDES, DRY_RUN=1)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  header = [l for l in lines if l.startswith('#SBATCH ')]
  assert len(header) == len(lines) - 1
  for option in ('--nodes=', '--ntasks-per-node=8', '--gpus-per-node=8',
                 '--signal=B:TERM@120', '--requeue', '--output=', '--time='):
    assert any(option in l for l in header), option
  words = shlex.split(lines[-1])
  assert words[:3] == ['cd', ROOT, '&&']
  assert words[3:5] == ['srun', '--kill-on-bad-exit=1']
  assert words[5:8] == ['python', '-m', 'denseav_jax.train']
  assert words[words.index('--config') + 1] == 'configs/denseav.py'
  assert words[words.index('--workdir') + 1] == '/shared/runs/denseav'
  for flag in ('--distributed', '--cluster=slurm', *OVERRIDES):
    assert flag in words


def test_slurm_header_is_read_by_sbatch():
  """sbatch reads #SBATCH lines only up to the first command of the script."""
  with open(os.path.join(LAUNCH, 'slurm.sbatch')) as f:
    lines = f.read().splitlines()
  last = max(i for i, l in enumerate(lines) if l.startswith('#SBATCH'))
  assert all(l.startswith('#') or not l.strip() for l in lines[:last])


@pytest.mark.parametrize('args, env, needle', [
    ([], dict(DRY_RUN=1), 'WORKDIR missing'),
    (['runs/x'], dict(), 'not inside a SLURM job'),
    (['runs/x'], dict(DRY_RUN=1, REPO='/nonexistent'), 'not the denseav-jax repository'),
])
@pytest.mark.subprocess
def test_slurm_errors_are_one_line(args, env, needle):
  r = _bash('slurm.sbatch', *args, **env)
  assert needle in _one_error_line(r, 'slurm.sbatch')


FAKE_SRUN = r'''
  #!/usr/bin/env bash
  printf '%s\n' "$@" > "$FAKE_DIR/srun_args"
  echo "$$" > "$FAKE_DIR/srun.pid"
  case "$FAKE_MODE" in
    ok) exit 0 ;;
    fail) exit 5 ;;
  esac
  trap 'echo "tasks saved a checkpoint"; exit 0' TERM  # What the training tasks do.
  while :; do sleep 0.1 & wait $!; done
'''
# SLURM signals the tasks themselves; here the fake srun stands in for them.
FAKE_SCANCEL = r'''
  #!/usr/bin/env bash
  echo "scancel $*" >> "$FAKE_DIR/slurm_calls"
  kill -TERM "$(cat "$FAKE_DIR/srun.pid")"
'''
FAKE_SCONTROL = r'''
  #!/usr/bin/env bash
  echo "scontrol $*" >> "$FAKE_DIR/slurm_calls"
'''


def _fake_slurm(tmp_path, mode, **extra):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _executable(bin_dir / 'srun', FAKE_SRUN)
  _executable(bin_dir / 'scancel', FAKE_SCANCEL)
  _executable(bin_dir / 'scontrol', FAKE_SCONTROL)
  env = _env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_DIR=str(tmp_path),
             FAKE_MODE=mode, SLURM_JOB_ID='4242', SLURM_SUBMIT_DIR=ROOT, SLURM_NTASKS='16',
             SLURM_JOB_NUM_NODES='2', SLURM_CPUS_PER_TASK='8', **extra)
  return _Launcher(['bash', os.path.join(LAUNCH, 'slurm.sbatch'), str(tmp_path / 'run'),
                    '--config.seed=1'], env)


def _slurm_calls(tmp_path):
  path = tmp_path / 'slurm_calls'
  return path.read_text().splitlines() if path.exists() else []


@pytest.mark.subprocess
def test_slurm_time_limit_signal_stops_tasks_then_requeues(tmp_path):
  job = _fake_slurm(tmp_path, 'term')
  assert _wait_for(lambda: (tmp_path / 'srun.pid').exists())
  job.p.send_signal(signal.SIGTERM)  # --signal=B:TERM@120: to the batch script only.
  rc, out, err = job.finish()
  assert rc == 0, out + err
  assert 'tasks saved a checkpoint' in out
  assert _slurm_calls(tmp_path) == ['scancel --signal=TERM 4242', 'scontrol requeue 4242']
  args = (tmp_path / 'srun_args').read_text().splitlines()
  assert args[:2] == ['--kill-on-bad-exit=1', 'python']
  assert {'--distributed', '--cluster=slurm', '--config.seed=1'} <= set(args)


@pytest.mark.subprocess
@pytest.mark.parametrize('mode, status', [('ok', 0), ('fail', 5)])
def test_slurm_without_signal_does_not_requeue(tmp_path, mode, status):
  rc, out, err = _fake_slurm(tmp_path, mode).finish()
  assert rc == status, out + err
  assert _slurm_calls(tmp_path) == []
  assert f'srun exited with status {status}' in out


@pytest.mark.subprocess
def test_slurm_requeue_can_be_turned_off(tmp_path):
  job = _fake_slurm(tmp_path, 'term', REQUEUE=0)
  assert _wait_for(lambda: (tmp_path / 'srun.pid').exists())
  job.p.send_signal(signal.SIGTERM)
  rc, out, err = job.finish()
  assert rc == 0, out + err
  assert _slurm_calls(tmp_path) == ['scancel --signal=TERM 4242']


# --- distributed.resolve ---------------------------------------------------------------------

SLURM_GPU = {  # Task 5 of 16, 8 per node, nodes gpu003-005 and gpu9 (2 of them in the step).
    'SLURM_JOB_ID': '12345', 'SLURM_NTASKS': '16', 'SLURM_PROCID': '5', 'SLURM_LOCALID': '5',
    'SLURM_STEP_NODELIST': 'gpu[003-005],gpu9', 'SLURM_NTASKS_PER_NODE': '8',
    'SLURM_STEP_NUM_NODES': '2'}
PORT = 12345 % 4096 + 61440


def test_explicit_flags():
  how, kw = resolve(cluster='explicit', coordinator_address='10.0.0.1:1234', num_processes=4,
                    process_id=2, environ={})
  assert kw == dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=2,
                    cluster_detection_method='deactivate')
  assert how == 'explicit: process 2 of 4'
  _, kw = resolve(cluster='explicit', coordinator_address='h:1', num_processes=2,
                  process_id=0, local_device_ids=['0', '1'], environ=SLURM_GPU)
  assert kw == dict(coordinator_address='h:1', num_processes=2, process_id=0,
                    local_device_ids=[0, 1])


@pytest.mark.parametrize('cluster', ['explicit', 'auto'])
def test_explicit_env_vars(cluster):
  env = {'JAX_COORDINATOR_ADDRESS': 'host0:9999', 'JAX_NUM_PROCESSES': '2',
         'JAX_PROCESS_ID': '1', **SLURM_GPU}  # Complete explicit values win over SLURM.
  how, kw = resolve(cluster=cluster, environ=env)
  assert kw == dict(coordinator_address='host0:9999', num_processes=2, process_id=1,
                    cluster_detection_method='deactivate')
  # Flags win over the variables.
  _, kw = resolve(cluster=cluster, process_id=0, coordinator_address='x:1', environ=env)
  assert (kw['process_id'], kw['coordinator_address']) == (0, 'x:1')


@pytest.mark.parametrize('given, missing', [
    (dict(num_processes=2, process_id=0), '--coordinator_address'),
    (dict(coordinator_address='h:1', process_id=0), '--num_processes'),
    (dict(coordinator_address='h:1', num_processes=2), '--process_id'),
])
def test_explicit_missing_value_names_the_flag(given, missing):
  with pytest.raises(ValueError, match=missing) as e:
    resolve(cluster='explicit', environ={}, **given)
  others = {'--coordinator_address', '--num_processes', '--process_id'} - {missing}
  assert not any(f'needs {o}' in str(e.value) or f', {o}' in str(e.value) for o in others)


@pytest.mark.parametrize('cluster, kwargs, env', [
    ('explicit', dict(coordinator_address='h:1', num_processes=2, process_id=2), {}),
    ('explicit', dict(coordinator_address='h:1', num_processes=2, process_id=-1), {}),
    ('auto', {}, {'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '4',
                  'JAX_PROCESS_ID': '7'}),
    ('slurm', dict(process_id=16), SLURM_GPU),
    ('tpu', dict(num_processes=4, process_id=4), {}),
])
def test_process_id_out_of_range(cluster, kwargs, env):
  with pytest.raises(ValueError, match='is not in \\[0, --num_processes='):
    resolve(cluster=cluster, environ=env, **kwargs)


def test_bad_values():
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES'):
    resolve(cluster='explicit', environ={'JAX_NUM_PROCESSES': 'two'})
  with pytest.raises(ValueError, match='--num_processes=0'):
    resolve(cluster='explicit', coordinator_address='h:1', num_processes=0, process_id=0,
            environ={})
  with pytest.raises(ValueError, match='--cluster='):
    resolve(cluster='k8s', environ={})
  with pytest.raises(ValueError, match='local_device_ids'):
    resolve(cluster='tpu', local_device_ids=['a'], environ={})


@pytest.mark.parametrize('cluster', ['slurm', 'auto'])
def test_slurm_one_task_per_gpu(cluster):
  how, kw = resolve(cluster=cluster, environ=SLURM_GPU)
  assert kw == dict(coordinator_address=f'gpu003:{PORT}', num_processes=16, process_id=5,
                    local_device_ids=[5])
  assert how == 'slurm: process 5 of 16, one task per GPU (local GPU 5)'
  # All GPUs of the node visible to every task (SLURM's default): still GPU SLURM_LOCALID.
  _, kw = resolve(cluster=cluster, environ=dict(
      SLURM_GPU, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'))
  assert kw['local_device_ids'] == [5]


def test_slurm_port_matches_jax(monkeypatch):
  """The coordinator is the one JAX's own SLURM detection would pick."""
  from jax._src.clusters import slurm_cluster  # pylint: disable=g-import-not-at-top
  for k, v in SLURM_GPU.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv('JAX_COORDINATOR_PORT', raising=False)
  ours = resolve(cluster='slurm', environ=SLURM_GPU)[1]['coordinator_address']
  assert ours == slurm_cluster.SlurmCluster.get_coordinator_address(None, None)


def test_slurm_port_from_env_and_tasks_per_node_forms():
  env = dict(SLURM_GPU, JAX_COORDINATOR_PORT='5555')
  assert resolve(cluster='slurm', environ=env)[1]['coordinator_address'] == 'gpu003:5555'
  # Tasks per node from SLURM_TASKS_PER_NODE ('8(x2)') or SLURM_NTASKS / nodes.
  for extra in ({'SLURM_TASKS_PER_NODE': '8(x2)'}, {}):
    env = {k: v for k, v in SLURM_GPU.items() if k != 'SLURM_NTASKS_PER_NODE'}
    env.update(extra)
    assert resolve(cluster='slurm', environ=env)[1]['local_device_ids'] == [5]
  # An explicit coordinator and devices win.
  _, kw = resolve(cluster='slurm', coordinator_address='head:1', local_device_ids=['2'],
                  environ=SLURM_GPU)
  assert kw == dict(coordinator_address='head:1', num_processes=16, process_id=5,
                    local_device_ids=[2])


@pytest.mark.parametrize('per_node', [
    {'SLURM_NTASKS_PER_NODE': '1'}, {'SLURM_TASKS_PER_NODE': '1(x2)'},
    {'SLURM_STEP_TASKS_PER_NODE': '1(x2)', 'SLURM_NTASKS_PER_NODE': '8'},
    {'SLURM_STEP_NUM_NODES': '2'}])
def test_slurm_one_task_per_node(per_node):
  env = {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2', 'SLURM_PROCID': '1', 'SLURM_LOCALID': '0',
         'SLURM_STEP_NODELIST': 'node[07-08]', **per_node}
  how, kw = resolve(cluster='slurm', environ=env)
  assert kw == dict(coordinator_address=f'node07:{7 + 61440}', num_processes=2,
                    process_id=1, cluster_detection_method='deactivate')
  assert 'local_device_ids' not in kw and 'one task per node' in how


def test_slurm_gpus_bound_per_task():
  """--gpus-per-task=1: each task sees only its GPU; SLURM_LOCALID=5 is no index into it."""
  _, kw = resolve(cluster='slurm', environ=dict(SLURM_GPU, CUDA_VISIBLE_DEVICES='5'))
  assert kw['cluster_detection_method'] == 'deactivate' and 'local_device_ids' not in kw


def test_slurm_errors():
  with pytest.raises(ValueError, match='SLURM_JOB_ID / SLURM_NTASKS / SLURM_PROCID'):
    resolve(cluster='slurm', environ={})
  with pytest.raises(ValueError, match='SLURM_LOCALID'):
    resolve(cluster='slurm', environ={k: v for k, v in SLURM_GPU.items()
                                      if k != 'SLURM_LOCALID'})
  with pytest.raises(ValueError, match='SLURM_STEP_NODELIST'):
    resolve(cluster='slurm', environ={k: v for k, v in SLURM_GPU.items()
                                      if k != 'SLURM_STEP_NODELIST'})


def test_tpu_and_auto_leave_detection_to_jax():
  assert resolve(cluster='tpu', environ={}) == ('auto-detected (Cloud TPU / Open MPI)', {})
  assert resolve(cluster='auto', environ={'JAX_PROCESS_ID': '1'})[1] == {'process_id': 1}


@pytest.mark.parametrize('nodes, host', [
    ('gpu[003-005],gpu9', 'gpu003'), ('n[001-004,9],gpu2', 'n001'), ('node1', 'node1'),
    ('node1,node2', 'node1'), ('gpu9,gpu[1-2]', 'gpu9'), ('a[7,3-4]', 'a7'),
    ('rack[2-3]-node[07-08],x1', 'rack2-node07'), ('  host-a.b  ', 'host-a.b')])
def test_first_slurm_host(nodes, host):
  assert first_slurm_host(nodes) == host


@pytest.mark.parametrize('nodes', ['', 'gpu[003', 'a b', ','])
def test_first_slurm_host_errors(nodes):
  with pytest.raises(ValueError, match='SLURM_STEP_NODELIST'):
    first_slurm_host(nodes)


def test_initialize_passes_resolved_kwargs_and_explains_failures(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  how = distributed.initialize(cluster='slurm', environ=SLURM_GPU)
  assert calls == [resolve(cluster='slurm', environ=SLURM_GPU)[1]] and 'slurm' in how

  def fail(**kw):
    raise RuntimeError('Barrier timed out.\n  Some detail')
  monkeypatch.setattr(jax.distributed, 'initialize', fail)
  with pytest.raises(ValueError, match='jax.distributed.initialize failed .*Barrier timed '
                     'out. Some detail.*--cluster=explicit'):
    distributed.initialize(cluster='slurm', environ=SLURM_GPU)


@pytest.mark.subprocess
def test_train_cli_reports_a_bad_layout_in_one_line(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.train', '--config',
                      os.path.join(ROOT, 'configs', 'synthetic.py:runlocal'), '--workdir',
                      str(tmp_path / 'run'), '--distributed', '--cluster=slurm'], cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and '--cluster=slurm but SLURM_JOB_ID' in errors[0], r.stderr
