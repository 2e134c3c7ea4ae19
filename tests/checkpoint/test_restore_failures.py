"""Resume past damaged checkpoints, stop on trouble (checkpoint/restore_failures.py).

Damage is made on real files of checkpoints written by TrainCheckpoints (the same Orbax
layout the trainer writes: OCDBT with zstd-compressed zarr chunks); trouble is a real
out-of-memory (a subprocess with a low address-space limit), a real sharding mismatch,
and I/O errors injected into the manager's restore. The trainer-level fallback is in
tests/trainer/test_train.py (test_damaged_latest_checkpoints_fall_back)."""

import errno
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import flax
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import pytest

import conftest
from denseav_jax import errors
from denseav_jax.checkpoint import restore_failures as failures
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib

STEPS = (1, 2, 3)
# Orbax's failed async reads leave an asyncio callback on a closed loop behind (harmless).
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _config():
  return ml_collections.ConfigDict({'resume_strict': True, 'model': {'code_dim': 16},
                                    'input': {}})


def _shardings(mesh=None):
  mesh = mesh or jax.make_mesh((8,), ('x',))
  return NamedSharding(mesh, P('x')), NamedSharding(mesh, P())


def _state(step):
  split, rep = _shardings()
  rng = np.random.default_rng(step)
  return _State(step=jax.device_put(np.int32(step), rep), params={
      # Random floats: zstd stores them nearly as they are. A ramp: zstd compresses it.
      'w': jax.device_put(rng.normal(size=(4096, 64)).astype(np.float32), split),
      'ramp': jax.device_put(np.tile(np.arange(64, dtype=np.float32), (4096, 1)) * step,
                             split),
      'b': jax.device_put(np.full((8, 16), step, np.float32), rep)})


def _abstract(split=None):
  default_split, rep = _shardings()
  split = split or default_split
  return _State(step=jax.ShapeDtypeStruct((), np.int32, sharding=rep), params={
      'w': jax.ShapeDtypeStruct((4096, 64), np.float32, sharding=split),
      'ramp': jax.ShapeDtypeStruct((4096, 64), np.float32, sharding=default_split),
      'b': jax.ShapeDtypeStruct((8, 16), np.float32, sharding=rep)})


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  """A workdir with checkpoints 1, 2, 3 of a small sharded state."""
  workdir = str(tmp_path_factory.mktemp('pristine'))
  ckpts = ckpt_lib.TrainCheckpoints(workdir, keep=10, async_save=False)
  meta = {'phase': 1, 'data': {'position': 0}, 'config': ckpt_lib.config_json(_config())}
  for step in STEPS:
    ckpts.save(step, _state(step), meta)
  ckpts.close()
  return workdir


def _copy(pristine, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(pristine, workdir)
  return workdir


def _resume(workdir, lines=None, abstract=None):
  ckpts = ckpt_lib.TrainCheckpoints(workdir, keep=10, async_save=False,
                                    log=(lines.append if lines is not None else print))
  try:
    return ckpts.restore_latest(_config(), lambda meta: abstract or _abstract())
  finally:
    ckpts.close()


def _in_place(workdir):
  return sorted(int(s) for s in os.listdir(f'{workdir}/checkpoints') if s.isdigit())


# ------------------------------------------------------------------------------- damage

def _files(ckpt, pattern):
  found = [f for f in glob.glob(f'{ckpt}/{pattern}', recursive=True) if os.path.isfile(f)]
  assert found, pattern
  return found


def _truncate(files, fraction=0.5):
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(int(os.path.getsize(f) * fraction))


def _write(files, data):
  for f in files:
    with open(f, 'wb') as fh:
      fh.write(data)


def _flip(files, every=512, start=None):
  """XOR 4 bytes every `every` bytes from byte 16 (hits every chunk of a file), or once,
  at `start` (a fraction of the file)."""
  for f in files:
    size = os.path.getsize(f)
    at_ = [int(size * start)] if start is not None else range(16, size - 8, every)
    with open(f, 'r+b') as fh:
      for at in at_:
        fh.seek(at)
        b = fh.read(4)
        fh.seek(at)
        fh.write(bytes(x ^ 0x5A for x in b))


def _remove(paths):
  for p in paths:
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


_DATA = 'state/ocdbt.process_0/d/*'  # The arrays' chunks.
# kind: (how to damage a checkpoint folder, what the warning names: the error as measured).
DAMAGE = {
    'meta_garbage_json': (lambda c: _write(_files(c, 'meta/metadata'), b'{"not json'),
                          'JSONDecodeError'),
    'meta_empty': (lambda c: _write(_files(c, 'meta/metadata'), b''), 'JSONDecodeError'),
    'meta_not_utf8': (lambda c: _write(_files(c, 'meta/metadata'), b'\xff\xfe{'),
                      'UnicodeDecodeError'),
    'meta_without_keys': (lambda c: _write(_files(c, 'meta/metadata'), b'{"step": 3}'),
                          'BadMeta'),
    'meta_file_missing': (lambda c: _remove(_files(c, 'meta/metadata')),
                          'FileNotFoundError'),
    'meta_folder_missing': (lambda c: _remove([f'{c}/meta']), 'was not found'),
    'state_metadata_garbage': (lambda c: _write(_files(c, 'state/_METADATA'), b'{"x'),
                               'JSONDecodeError'),
    'state_metadata_missing': (lambda c: _remove(_files(c, 'state/_METADATA')),
                               'MissingFile'),
    'state_folder_missing': (lambda c: _remove([f'{c}/state']), 'was not found'),
    'arrays_truncated': (lambda c: _truncate(_files(c, _DATA)), 'OUT_OF_RANGE'),
    'arrays_emptied': (lambda c: _truncate(_files(c, _DATA), 0), 'OUT_OF_RANGE'),
    'arrays_missing': (lambda c: _remove(_files(c, _DATA)), 'FAILED_PRECONDITION'),
    'arrays_zstd_corrupted': (lambda c: _flip(_files(c, _DATA)), 'FAILED_PRECONDITION'),
    'ocdbt_manifest_truncated': (lambda c: _truncate(_files(c, 'state/manifest.ocdbt')),
                                 'DATA_LOSS'),
    'ocdbt_manifest_missing': (lambda c: _remove(_files(c, 'state/manifest.ocdbt')),
                               'NOT_FOUND'),
    'ocdbt_nodes_truncated': (lambda c: _truncate(_files(c, 'state/d/*')), 'OUT_OF_RANGE'),
    'ocdbt_nodes_corrupted': (lambda c: _flip(_files(c, 'state/d/*'), start=0.5),
                              'DATA_LOSS'),  # The node's checksum.
    'ocdbt_nodes_zstd_header': (lambda c: _flip(_files(c, 'state/d/*'), every=64),
                                'Error decoding b-tree node'),  # INVALID_ARGUMENT.
    'ocdbt_nodes_missing': (lambda c: _remove(_files(c, 'state/d/*')), 'NOT_FOUND'),
}


@pytest.mark.parametrize('kind', sorted(DAMAGE))
def test_damage_is_set_aside_and_resume_falls_back(pristine, tmp_path, kind):
  damage, named = DAMAGE[kind]
  workdir = _copy(pristine, tmp_path)
  damage(f'{workdir}/checkpoints/3')
  lines = []
  state, meta = _resume(workdir, lines)
  assert int(state.step) == 2 and meta['phase'] == 1
  np.testing.assert_array_equal(np.asarray(state.params['w']),
                                np.asarray(_state(2).params['w']))
  assert len(lines) == 1 and f'{workdir}/checkpoints/3 cannot be restored' in lines[0]
  assert named in lines[0], lines[0]  # The error a damaged file produces, as measured.
  assert '\n' not in lines[0]
  assert _in_place(workdir) == [1, 2]
  assert len(glob.glob(f'{workdir}/checkpoints_damaged/3-*')) == 1


def test_all_damaged_refuses_instead_of_starting_from_scratch(pristine, tmp_path):
  workdir = _copy(pristine, tmp_path)
  for step in STEPS:
    _truncate(_files(f'{workdir}/checkpoints/{step}', _DATA))
  lines = []
  with pytest.raises(errors.CheckpointError) as e:
    _resume(workdir, lines)
  message = str(e.value)
  assert '\n' not in message and f'{workdir}/checkpoints_damaged' in message
  assert 'new --workdir' in message and 'step 0' in message
  assert len(lines) == 3 and _in_place(workdir) == []
  with pytest.raises(errors.CheckpointError, match='checkpoints_damaged'):
    _resume(workdir)  # Run again: still refused, never a silent fresh start.
  assert _resume(str(tmp_path / 'fresh')) is None  # A new workdir starts from scratch.


# ------------------------------------------------------------------------------ trouble

def _tensorstore_io_error():
  """An EIO as it reaches us through Orbax: TensorStore's ValueError (status UNKNOWN,
  the OS error code attached) wrapped in Orbax's bare Exception."""
  inner = ValueError(
      'UNKNOWN: Error reading "params.w/0.0" in OCDBT database at local file "x/": '
      "Failed to open: \"x/d/0c06\": Input/output error [os_error_code='5']")
  outer = Exception('Encountered error while reading array index: (slice(0, 512, 1),)')
  outer.__cause__ = inner
  return outer


TROUBLE = {  # name: (the error, which read fails, what the line says to do)
    'eio_state': (OSError(errno.EIO, 'Input/output error'), 'state', 'filesystem'),
    'eio_meta': (OSError(errno.EIO, 'Input/output error'), 'meta', 'filesystem'),
    'eio_tensorstore': (_tensorstore_io_error(), 'state', 'filesystem'),
    'etimedout': (TimeoutError(errno.ETIMEDOUT, 'Connection timed out'), 'state',
                  'filesystem'),
    'enospc': (OSError(errno.ENOSPC, 'No space left on device'), 'meta', 'filesystem'),
    'eacces': (PermissionError(errno.EACCES, 'Permission denied'), 'state', 'filesystem'),
    'stale_nfs': (OSError(errno.ESTALE, 'Stale file handle'), 'meta', 'filesystem'),
    'tensorstore_unavailable': (ValueError('UNAVAILABLE: gcs read failed'), 'state',
                                'filesystem'),
    'memory_error': (MemoryError('Unable to allocate 256. MiB'), 'state', 'memory'),
    'xla_resource_exhausted': (jax.errors.JaxRuntimeError(
        'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.'),
        'state', 'memory'),
}


@pytest.mark.parametrize('name', sorted(TROUBLE))
def test_trouble_stops_in_one_line_and_moves_nothing(pristine, tmp_path, monkeypatch,
                                                     name):
  error, item, hint = TROUBLE[name]
  workdir = _copy(pristine, tmp_path)
  # Raised where Orbax reads the item (the handler), as a real read error would be.
  handler = {'state': ckpt_lib.ocp.StandardCheckpointHandler,
             'meta': ckpt_lib.ocp.JsonCheckpointHandler}[item]
  restore = handler.restore

  def failing(self, directory, *args, **kwargs):
    if str(directory).endswith(f'/{item}'):  # Not the manager's own metrics item.
      raise error
    return restore(self, directory, *args, **kwargs)

  monkeypatch.setattr(handler, 'restore', failing)
  lines = []
  with pytest.raises(errors.CheckpointError) as e:
    _resume(workdir, lines)
  message = str(e.value)
  assert '\n' not in message, message
  assert f'checkpoint {workdir}/checkpoints/3 could not be restored' in message
  assert type(failures.chain(error)[-1]).__name__ in message
  assert hint in message and 'Nothing was moved' in message
  assert not lines and _in_place(workdir) == list(STEPS)
  assert not os.path.exists(f'{workdir}/checkpoints_damaged')


def test_sharding_mismatch_is_trouble(pristine, tmp_path):
  """Restore into a sharding the arrays cannot take (4096 rows over 3 devices)."""
  workdir = _copy(pristine, tmp_path)
  three = Mesh(np.array(jax.devices()[:3]), ('x',))
  lines = []
  with pytest.raises(errors.CheckpointError) as e:
    _resume(workdir, lines, abstract=_abstract(NamedSharding(three, P('x'))))
  message = str(e.value)
  assert '\n' not in message and 'IndivisibleError' in message
  assert 'config.mesh' in message and 'Nothing was moved' in message
  assert not lines and _in_place(workdir) == list(STEPS)
  assert not os.path.exists(f'{workdir}/checkpoints_damaged')


_OOM_SCRIPT = textwrap.dedent('''
    import resource, sys
    import flax, jax, ml_collections, numpy as np
    from denseav_jax import errors
    from denseav_jax.checkpoint import train_checkpoints as ckpt_lib

    @flax.struct.dataclass
    class State:
      step: jax.Array
      params: dict

    workdir, mode = sys.argv[1:]
    shape = (64, 1024, 1024)  # 256 MiB of float32 (zeros: a few KiB on disk).
    config = ml_collections.ConfigDict({'resume_strict': True, 'model': {}, 'input': {}})
    ckpts = ckpt_lib.TrainCheckpoints(workdir, keep=10, async_save=False)
    if mode == 'save':
      for step in (1, 2):
        ckpts.save(step, State(step=jax.numpy.int32(step), params={
            'w': jax.numpy.zeros(shape, np.float32)}), {
            'phase': 1, 'data': {}, 'config': ckpt_lib.config_json(config)})
      ckpts.close()
      sys.exit(0)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = State(step=jax.ShapeDtypeStruct((), np.int32, sharding=one),
                     params={'w': jax.ShapeDtypeStruct(shape, np.float32, sharding=one)})
    status = open('/proc/self/status').read().split('VmSize:')[1].split()[0]
    limit = int(status) * 1024 + 100 * 2**20  # 100 MiB more than mapped now.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
      ckpts.restore_latest(config, lambda meta: abstract)
    except errors.CheckpointError as e:
      print('error: ' + str(e))
      sys.exit(2)
    print('restored')
''')


@pytest.mark.subprocess
def test_out_of_memory_is_trouble(tmp_path):
  """A real out-of-memory: the restore's 256 MiB allocation fails under an address-space
  limit (a subprocess); one line, every checkpoint still in place."""
  workdir = str(tmp_path / 'run')
  script = tmp_path / 'oom.py'
  script.write_text(_OOM_SCRIPT)
  env = conftest.subprocess_env(devices=None, cache=False)
  run = lambda mode: subprocess.run([sys.executable, str(script), workdir, mode], env=env,
                                    capture_output=True, text=True, timeout=300)
  saved = run('save')
  assert saved.returncode == 0, saved.stderr[-3000:]
  got = run('restore')
  assert got.returncode == 2, (got.stdout, got.stderr[-3000:])
  lines = [l for l in got.stdout.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, got.stdout
  assert f'checkpoint {workdir}/checkpoints/2 could not be restored' in lines[0]
  assert 'MemoryError' in lines[0] and 'out of memory' in lines[0], lines[0]
  assert _in_place(workdir) == [1, 2]
  assert not os.path.exists(f'{workdir}/checkpoints_damaged')


def test_classify_walks_the_chain_and_os_errors_win():
  assert failures.classify(_tensorstore_io_error()) == failures.TROUBLE
  wrapped = Exception('Encountered error while reading array index')
  wrapped.__cause__ = ValueError('DATA_LOSS: Error decoding local file "x/manifest.ocdbt"')
  assert failures.classify(wrapped) == failures.DAMAGE
  assert failures.reason(wrapped).startswith('ValueError: DATA_LOSS')
  # A TensorStore damage code, but the operating system reported the error: trouble.
  assert failures.classify(ValueError(
      "NOT_FOUND: Error reading x [os_error_code='116']")) == failures.TROUBLE
  assert failures.classify(ValueError('shapes do not match')) == failures.TROUBLE
  assert failures.classify(KeyError('params')) == failures.TROUBLE
