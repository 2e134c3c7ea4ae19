"""One trainer per workdir (checkpoint/workdir_lock.py): a second holder is refused with
the first one's host, pid and start time; the operating system frees the lock of a killed
trainer; a second trainer started on a running one's workdir leaves the first untouched."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import conftest
from conftest import load_config
from denseav_jax import errors
from denseav_jax.checkpoint import model_io
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib
from denseav_jax.checkpoint import workdir_lock
from denseav_jax.trainer import loop
from denseav_jax.trainer import progress


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  workdir = str(tmp_path / 'run')
  with workdir_lock.hold(workdir):
    held = json.loads(open(f'{workdir}/{workdir_lock.LOCK_FILE}').read())
    assert held['pid'] == os.getpid() and held['host'] == socket.gethostname()
    with pytest.raises(errors.UserError) as e:
      with workdir_lock.hold(workdir):  # Another open file: flock refuses it.
        pass
    message = str(e.value)
    assert '\n' not in message and f'workdir {workdir} is in use' in message
    assert f'pid {os.getpid()}' in message and f'host {socket.gethostname()}' in message
    assert f'since {held["since"]}' in message and '--workdir' in message
  with workdir_lock.hold(workdir):  # Released at the end of the block.
    pass


_HOLDER = '''
import sys, time
from denseav_jax.checkpoint import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('held', flush=True)
  time.sleep(600)
'''


@pytest.mark.subprocess
def test_the_lock_of_a_killed_trainer_is_free(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, workdir], text=True,
                            stdout=subprocess.PIPE,
                            env=conftest.subprocess_env(devices=None, cache=False))
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(errors.UserError, match=f'pid {holder.pid},'):
      with workdir_lock.hold(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lock.hold(workdir):  # The OS released it with the process.
    pass


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_second_trainer_is_refused_and_the_first_finishes_untouched(tmp_path,
                                                                     monkeypatch):
  """While a trainer runs (inside its first save), the same command is started again on
  its workdir: it exits 2 with one line naming the first, and writes nothing there."""
  workdir = str(tmp_path / 'run')
  c = load_config()
  c.update(num_train_steps=4, checkpoint_every_steps=2, log_every_steps=1,
           eval_at_end=False)
  second = []
  save = ckpt_lib.TrainCheckpoints.save

  def save_and_start_another(self, step, *args, **kwargs):
    if not second:
      second.append(subprocess.run(
          [sys.executable, '-m', 'denseav_jax.train',
           '--config', 'configs/synthetic.py:runlocal', '--workdir', workdir,
           '--config.seed=7'], cwd=conftest.ROOT, capture_output=True, text=True,
          timeout=300, env=conftest.subprocess_env()))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.TrainCheckpoints, 'save', save_and_start_another)
  loop.train_and_evaluate(c, workdir)
  got = second[0]
  assert got.returncode == 2, (got.stdout, got.stderr[-3000:])
  lines = [l for l in got.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, got.stderr[-3000:]
  assert f'workdir {workdir} is in use by another trainer' in lines[0]
  assert f'pid {os.getpid()}' in lines[0] and socket.gethostname() in lines[0]
  # The first run: every step's metrics, its final checkpoint, its own config.
  assert sorted(progress.read_metrics(workdir)) == [1, 2, 3, 4]
  ckpts = ckpt_lib.TrainCheckpoints(workdir)
  assert ckpts.steps() == [2, 4] and ckpts.read_meta(4)['step'] == 4
  ckpts.close()
  assert model_io.load_config(workdir).seed == 0
  assert not os.path.exists(f'{workdir}/checkpoints_damaged')
  with workdir_lock.hold(workdir):  # Free again once the first run returned.
    pass
