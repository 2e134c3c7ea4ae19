"""Prepared records on a bucket (`data.prepared_dir=gs://...`), read from local disk.

The array_record reader that TFDS and Grain use opens local files only (its open-source
build has no GCS file system), so the records of a split on a bucket are copied once to
`data.cache_dir` on each host (default ~/.cache/denseav_jax/prepared), under the bucket's
path, and read from there:

- what is copied: the data set's metadata files (dataset_info.json, features.json, ...) and
  the array_record shards of the split being read (the other splits stay on the bucket);
- a file already in the cache with the bucket object's size is kept, so a restarted or
  resumed run copies nothing again; a file of another size is copied again;
- each file is copied to a uniquely named temporary file and renamed (io.atomic_path),
  so a copy killed midway never leaves a shard a reader would open;
- before copying, the free space under the cache is checked against what is missing: too
  little is one line naming data.cache_dir and the sizes.

A run over a data set larger than a host's local disk reads it from a bucket mounted with
gcsfuse instead (data.prepared_dir=/mnt/bucket/...), at the mount's speed.
"""

from __future__ import annotations

import os
import shutil

from denseav_jax import errors
from denseav_jax import io as io_lib

DEFAULT_CACHE = os.path.join('~', '.cache', 'denseav_jax', 'prepared')


def local_copy(path: str, split: str, cache_dir: str = '', log=print) -> str:
  """The local folder holding `path`'s (a URL) metadata and `split`'s shards, copied as
  the module doc says; a local `path` is returned unchanged."""
  if not io_lib.is_url(path):
    return path
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_CACHE))
  scheme, rest = path.split('://', 1)
  local = os.path.join(root, scheme, rest.strip('/'))
  remote = epath.Path(path)
  wanted = []
  for child in remote.iterdir():
    name = child.name
    if name.startswith('.') or child.is_dir():  # prepare's own working state.
      continue
    shard = '.array_record' in name or '.tfrecord' in name
    if shard and f'-{split}.' not in name:
      continue  # Another split's shards.
    wanted.append((name, child.stat().length))
  missing = [(n, size) for n, size in wanted
             if not (os.path.isfile(os.path.join(local, n))
                     and os.path.getsize(os.path.join(local, n)) == size)]
  if not missing:
    return local
  need = sum(size for _, size in missing)
  os.makedirs(local, exist_ok=True)
  free = shutil.disk_usage(local).free
  if need > free:
    raise errors.DataError(
        f'data.prepared_dir={path}: the {split} split needs {need / 2**30:.1f} GiB copied '
        f'to data.cache_dir={root}, which has {free / 2**30:.1f} GiB free: point '
        'data.cache_dir at a larger local disk, or mount the bucket (gcsfuse) and set '
        'data.prepared_dir to the mount')
  log(f'Copying {len(missing)} file(s), {need / 2**20:.1f} MiB, of {path} ({split}) to '
      f'{local}')
  for name, _ in missing:
    with io_lib.atomic_path(os.path.join(local, name)) as tmp:
      (remote / name).copy(epath.Path(tmp), overwrite=True)
  return local
