"""launch/tpu_pod.sh only cleans a folder it made: REMOTE_DIR may not climb out of the home
directory ('..'), and the remote clean-up refuses a non-empty folder without its marker.

The remote command is taken from the script's DRY_RUN output and run by bash in a stand-in
home directory, as gcloud ssh would run it on a worker.
"""

import os
import shlex
import subprocess
import tarfile

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'launch', 'tpu_pod.sh')
pytestmark = pytest.mark.subprocess


def _dry_run(remote_dir):
  env = {k: v for k, v in os.environ.items() if k not in ('SKIP_COPY', 'STOP', 'DETACH')}
  env.update(TPU='pod', ZONE='z', DRY_RUN='1', SKIP_INSTALL='1', REMOTE_DIR=remote_dir)
  return subprocess.run(['bash', SCRIPT, '/mnt/shared/run'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('remote_dir', ['..', 'a/..', 'a/../..', 'x/./y', '/home/u/x'])
def test_remote_dir_that_leaves_home_is_refused(remote_dir):
  r = _dry_run(remote_dir)
  assert r.returncode == 2 and not r.stdout
  [line] = r.stderr.strip().splitlines()
  assert line.startswith('tpu_pod.sh: error: REMOTE_DIR=')


def _cleanup_command(remote_dir):
  r = _dry_run(remote_dir)
  assert r.returncode == 0, r.stderr
  [line] = [l for l in r.stdout.splitlines() if 'tar -xzf' in l]
  words = shlex.split(line)
  return words[words.index('--command') + 1]


def _run_on_worker(command, home):
  with tarfile.open(home / 'denseav-jax-code.tar.gz', 'w:gz') as tar:
    src = home.parent / 'src.txt'
    src.write_text('new code')
    tar.add(src, arcname='code.txt')
  return subprocess.run(['bash', '-c', command], cwd=home, env=dict(os.environ, HOME=str(home)),
                        capture_output=True, text=True, timeout=60)


def test_cleanup_only_inside_a_folder_it_made(tmp_path):
  home = tmp_path / 'home'
  home.mkdir()
  command = _cleanup_command('work/denseav')
  # A folder that exists with someone's files and no marker: refused, nothing deleted.
  (home / 'work' / 'denseav').mkdir(parents=True)
  (home / 'work' / 'denseav' / 'notes.txt').write_text('mine')
  r = _run_on_worker(command, home)
  assert r.returncode != 0 and 'was not made by tpu_pod.sh' in r.stderr
  assert (home / 'work' / 'denseav' / 'notes.txt').read_text() == 'mine'
  # A new folder: made, marked, code unpacked; the next copy replaces the code but keeps
  # .venv and runs/.
  command = _cleanup_command('work/fresh')
  r = _run_on_worker(command, home)
  assert r.returncode == 0, r.stderr
  fresh = home / 'work' / 'fresh'
  assert (fresh / '.denseav-jax-remote').exists() and (fresh / 'code.txt').exists()
  (fresh / 'stale.py').write_text('old')
  (fresh / '.venv').mkdir()
  (fresh / 'runs').mkdir()
  r = _run_on_worker(command, home)
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(fresh)) == ['.denseav-jax-remote', '.venv', 'code.txt', 'runs']
