"""Writing outputs so that a crash never leaves half a file, and flattening nested trees.

Every file the project writes for a user to read (metrics, configs, manifests, tables,
figures, videos, features) goes through `atomic_path` / `write_text` / `write_json` /
`write_bytes`: the bytes go to a uniquely named temporary file beside the target, are
flushed to disk, and the file is renamed over the target (atomic on POSIX filesystems), so
readers see the old file or the new one, and two writers never share a temporary name.
"""

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, Mapping


@contextlib.contextmanager
def atomic_path(path: str, mode: int = 0o644) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension) to write; on success it is
  renamed over `path`, on any error removed. Creates the parent folder."""
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
