"""Two processes under jax.distributed take the same branch: both refuse a workdir whose
lock another trainer holds (process 0 takes it, the others hear its answer), both stop on
trouble that only one of them met (nothing moved), and both set aside a checkpoint that
only one of them found damaged, then resume from the one before it."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import conftest
from denseav_jax.checkpoint import workdir_lock

_WORKER = textwrap.dedent('''
    import errno, sys
    import flax, jax, ml_collections, numpy as np
    import orbax.checkpoint as ocp
    port, index, locked, run = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=index)
    from denseav_jax import errors
    from denseav_jax.checkpoint import train_checkpoints as ckpt_lib
    from denseav_jax.checkpoint import workdir_lock

    try:
      with workdir_lock.hold(locked):
        print('lock: taken')
    except errors.UserError as e:
      print('lock: ' + str(e))

    @flax.struct.dataclass
    class State:
      step: jax.Array
      params: dict

    mesh = jax.make_mesh((2,), ('x',))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('x'))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    config = ml_collections.ConfigDict({'resume_strict': True, 'model': {}, 'input': {}})
    meta = {'phase': 1, 'data': {}, 'config': ckpt_lib.config_json(config)}
    ckpts = ckpt_lib.TrainCheckpoints(run, keep=10, async_save=False)
    for step in (1, 2):
      w = jax.make_array_from_callback((4, 8), split, lambda i: np.full((2, 8), step, np.float32))
      s = jax.make_array_from_callback((), rep, lambda i: np.int32(step))
      ckpts.save(step, State(step=s, params={'w': w}), meta)
    ckpts.close()
    abstract = State(step=jax.ShapeDtypeStruct((), np.int32, sharding=rep),
                     params={'w': jax.ShapeDtypeStruct((4, 8), np.float32, sharding=split)})
    restore = ocp.StandardCheckpointHandler.restore

    def failing_on_process_1(error):  # Where Orbax reads the arrays, on one process only.
      def fn(self, directory, *args, **kwargs):
        if index == 1 and str(directory).endswith('/checkpoints/2/state'):
          raise error
        return restore(self, directory, *args, **kwargs)
      return fn

    for name, error in (('trouble', OSError(errno.EIO, 'Input/output error')),
                        ('damage', ValueError('DATA_LOSS: Error decoding local file "x"'))):
      ocp.StandardCheckpointHandler.restore = failing_on_process_1(error)
      ckpts = ckpt_lib.TrainCheckpoints(run, keep=10, async_save=False)
      try:
        state, _ = ckpts.restore_latest(config, lambda meta: abstract)
        print(f'{name}: resumed from step {int(state.step)}')
      except errors.CheckpointError as e:
        print(f'{name}: ' + str(e))
      ckpts.close()
''')


@pytest.mark.multiprocess
@pytest.mark.subprocess
def test_two_processes_take_the_same_branch(tmp_path):
  locked, run = str(tmp_path / 'locked'), str(tmp_path / 'run')
  script = tmp_path / 'worker.py'
  script.write_text(_WORKER)
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    port = sock.getsockname()[1]
  env = conftest.subprocess_env(devices=1, cache=False)
  with workdir_lock.hold(locked):  # Another trainer holds this workdir.
    workers = [subprocess.Popen([sys.executable, str(script), str(port), str(i), locked, run],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    try:
      outs = [w.communicate(timeout=300) for w in workers]
    finally:
      for w in workers:
        if w.poll() is None:
          w.kill()
  for w, (out, err) in zip(workers, outs):
    assert w.returncode == 0, err[-3000:]
    said = dict(l.split(': ', 1) for l in out.splitlines() if ': ' in l)
    assert said['lock'].startswith(f'workdir {locked} is in use by another trainer'), out
    assert f'pid {os.getpid()}' in said['lock'], out  # Process 1 hears process 0's line.
    assert f'checkpoint {run}/checkpoints/2 could not be restored' in said['trouble'], out
    assert said['damage'] == 'resumed from step 1', out
  assert 'Input/output error' in outs[1][0] and 'another process' in outs[0][0]
  assert sorted(os.listdir(f'{run}/checkpoints')) == ['1']  # Moved once, by process 0.
  assert len(os.listdir(f'{run}/checkpoints_damaged')) == 1
