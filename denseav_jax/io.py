"""Writing outputs so that a crash never leaves half a file, and flattening nested trees.

Every file the project writes for a user to read (metrics, configs, manifests, tables,
figures, videos, features) goes through `atomic_path` / `write_text` / `write_json` /
`write_bytes`: the bytes go to a uniquely named temporary file beside the target, are
flushed to disk, and the file is renamed over the target (atomic on POSIX filesystems), so
readers see the old file or the new one, and two writers never share a temporary name.

Paths may be local or URLs (`gs://bucket/run`, through `etils.epath` and gcsfs): a pod's
workdir is normally a bucket. On an object store an object appears whole when its upload
completes, so `atomic_path` writes a local temporary file and uploads it in one piece. The
other helpers here (`absolute`, `exists`, `isdir`, `makedirs`, `listdir`, `read_text`,
`read_bytes`, `move`) are the project's one path layer for workdirs and prepared data; code that
touches a workdir goes through them, never `os.path` on its own.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

from etils import epath


def is_url(path) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...), False for local ones."""
  return '://' in os.fspath(path)


def absolute(path) -> str:
  """The absolute form of a local path; a URL unchanged (no trailing slash)."""
  path = os.fspath(path)
  return path.rstrip('/') if is_url(path) else os.path.abspath(path)


def exists(path) -> bool:
  return epath.Path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
  return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def makedirs(path) -> None:
  """Creates `path` and its parents (on an object store: nothing to create)."""
  if is_url(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
  """Names (not paths) in a folder; [] when it does not exist."""
  if is_url(path):
    p = epath.Path(path)
    return sorted(c.name for c in p.iterdir()) if p.exists() else []
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path) -> str:
  return epath.Path(path).read_text()


def move(src, dst) -> None:
  """Moves a file or a folder (a tree of objects on a bucket: copied, then deleted)."""
  if is_url(src) or is_url(dst):
    import fsspec  # pylint: disable=g-import-not-at-top  (with gcsfs: the `gcs` extra)
    fs, _ = fsspec.core.url_to_fs(os.fspath(src))
    fs.mv(os.fspath(src), os.fspath(dst), recursive=True)  # Objects have no folders.
  else:
    shutil.move(os.fspath(src), os.fspath(dst))


@contextlib.contextmanager
def atomic_path(path: str, mode: int = 0o644) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension) to write; on success it is
  renamed over `path`, on any error removed. Creates the parent folder. For a URL the
  temporary file is local and uploaded whole on success."""
  if is_url(path):
    base, ext = os.path.splitext(os.path.basename(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=f'.{base}.', suffix=f'.tmp{ext}')
    os.close(fd)
    try:
      yield tmp
      epath.Path(tmp).copy(epath.Path(path), overwrite=True)
    finally:
      with contextlib.suppress(OSError):
        os.unlink(tmp)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, tmp = tempfile.mkstemp(prefix=f'.{base}.', suffix=f'.tmp{ext}', dir=folder)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, mode)  # mkstemp's file is private; outputs are for everyone to read.
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_bytes(path: str, data: bytes) -> str:
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
  return path


def write_text(path: str, text: str) -> str:
  return write_bytes(path, text.encode('utf-8'))


def write_json(path: str, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
               default=None) -> str:
  return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys,
                                     default=default) + '\n')


def flatten(tree: Mapping[str, Any], sep: str = '/', prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (nested Mappings only; other values are leaves)."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(flatten(v, sep, key + sep))
    else:
      out[key] = v
  return out


def unflatten(flat: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """The inverse of `flatten`."""
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    *parents, leaf = key.split(sep)
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree
