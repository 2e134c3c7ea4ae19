"""One trainer per workdir: an exclusive lock on WORKDIR/trainer.lock, held for the run.

Two trainers in one workdir (a sweep run again, a SLURM job resubmitted while the first
still runs) overwrite each other's config and metrics, and the second one's checkpoint
manager removes the first one's in-flight save (Orbax deletes temporary checkpoint folders
when a manager is created), so both fail. The trainer therefore takes this lock before it
writes anything or creates its checkpoint manager, and a second trainer is refused with
one line naming the holder.

- Process 0 takes the lock (fcntl.flock, exclusive, non-blocking) and writes the holder
  into the file: host, pid, and since when. Under jax.distributed its answer (taken, or the
  holder line) is broadcast, so every process refuses together or goes on together.
- The operating system releases the lock when the process ends, however it ends (SIGKILL
  included), so a crashed run never leaves a stale lock: the file stays, but only a held
  lock counts, and the next trainer takes it. The descriptor is not inherited by programs
  the trainer starts (Python opens it close-on-exec; Grain spawns its workers), so no
  child keeps the lock alive after the trainer is gone.
- flock works across machines on NFSv4 (and NFSv3 with lockd) and on Lustre mounted with
  `flock`; on a FUSE mount that does not implement locks (gcsfuse) the kernel keeps the
  lock on the machine that took it, so a second trainer on the same machine is refused but
  one on another machine is not. A filesystem that refuses flock outright (Lustre without
  `flock`, NFS with `nolock` on some kernels) gets a one-line warning and the run goes on
  unlocked (docs/training.md#one-trainer-per-workdir).
- A `gs://` workdir is not locked: an object store has no advisory locks (the run says so
  in one warning line). Start each run once (one SLURM job / sweep per workdir).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from denseav_jax import errors
from denseav_jax import io as io_lib

LOCK_FILE = 'trainer.lock'
_LINE_BYTES = 1024  # The broadcast holder line (multi-host), UTF-8, zero-padded.
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN)


def _holder(path: str) -> str:
  """'host H, pid P, since T' from the lock file (or what can be said without it)."""
  try:
    with open(path, encoding='utf-8') as f:
      info = json.loads(f.read() or '{}')
    return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
            f"since {info.get('since', '?')}")
  except (OSError, ValueError):
    return 'holder unknown: the lock file could not be read'


def _try_lock(workdir: str, log) -> tuple[int | None, str]:
  """(fd holding the lock or None when flock is unsupported, '') or (None, refusal line)."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # Never truncated before it is held.
  except OSError as e:  # A refusal (not a raise), so every process hears it.
    return None, (f'cannot create the lock file {path} ({e.strerror}): check that '
                  '--workdir is a folder this user can write')
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in _BUSY:
      return None, (
          f'workdir {workdir} is in use by another trainer ({_holder(path)}; lock file '
          f'{path}). Wait for it to finish or stop it, or train into another --workdir')
    log(f'warning: cannot lock {path} ({os.strerror(e.errno or 0)}: this filesystem does '
        'not support flock); nothing stops a second trainer in this workdir')
    return None, ''
  info = {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'processes': jax.process_count()}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(info) + '\n').encode('utf-8'), 0)
  os.fsync(fd)
  return fd, ''


def _agree(refusal: str) -> str:
  """Process 0's refusal line ('' when it holds the lock), on every process."""
  if jax.process_count() == 1:
    return refusal
  data = np.zeros(_LINE_BYTES, np.uint8)
  if jax.process_index() == 0:
    raw = refusal.encode('utf-8')[:_LINE_BYTES]
    data[:len(raw)] = np.frombuffer(raw, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data).rstrip(b'\0').decode('utf-8', 'replace')


@contextlib.contextmanager
def hold(workdir: str, log=print) -> Iterator[None]:
  """Holds WORKDIR's trainer lock for the `with` block; raises errors.UserError naming the
  holder (host, pid, since when) on every process when another trainer holds it."""
  if io_lib.is_url(workdir):  # An object store has no advisory locks (module doc).
    if jax.process_index() == 0:
      log(f'warning: {workdir} is on an object store, which has no locks: nothing stops a '
          'second trainer in this workdir (start each run once; see docs/training.md)')
    yield
    return
  workdir = os.path.abspath(workdir)
  fd, refusal = (None, '')
  if jax.process_index() == 0:
    fd, refusal = _try_lock(workdir, log)
  refusal = _agree(refusal)
  if refusal:
    if fd is not None:  # Process 0 took it, but the agreement says no (cannot happen).
      os.close(fd)
    raise errors.UserError(refusal)
  try:
    yield
  finally:
    if fd is not None:  # Emptied while still held; the OS would release it anyway.
      with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
      os.close(fd)
