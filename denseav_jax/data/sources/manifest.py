"""The raw-layout index: which listed rows have every file present, cached as a manifest.

`index(dataset, root, split)` parses a data set's metadata (`Dataset.rows`), lists the
folders its files live in once (`Dataset.scan_dirs`) and keeps the rows whose files are all
there. The result is cached as a small manifest (the present rows as a bit mask), beside
the data when that folder is writable (`<split folder>/.denseav_manifest/`), else under
`data.manifest_dir` / ~/.cache/denseav_jax/manifests (docs/data.md#preparation).

A manifest is reused while the metadata files keep their size and modification time and
every folder the scan listed keeps its modification time (a folder's changes when a file is
added to, removed from or renamed in it): one stat per folder, however many files, and a
completed download is re-indexed on the next start. Filesystems without meaningful folder
times (some object-store mounts) need `rescan`.

Errors name a setting the way the running command takes it: `option_prefix` '--config.data.'
(train, evaluate: `--config.data.max_missing_fraction`) or '--' (prepare's own flags:
`--max_missing_fraction`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from typing import Any, Iterable

import numpy as np

from denseav_jax import io as io_lib
from denseav_jax import errors

log = logging.getLogger('denseav_jax.data')

MANIFEST_VERSION = 2  # 2: keyed by the listed folders' mtimes too.
_MANIFEST_DIR = '.denseav_manifest'
CONFIG_OPTIONS = '--config.data.'  # How train and evaluate take a data setting.

def list_files(root: str, folders: Iterable[str], stamps: list | None = None) -> set[str]:
  """Every file under root/folder (recursively), as paths relative to root.

  `stamps` (if given) receives [folder relative to root, mtime_ns] for every folder listed,
  taken before its listing (None for a folder that does not exist): what the manifest is
  keyed by, so that any later change inside a listed folder invalidates it.
  """
  found: set[str] = set()
  for folder in folders:
    stack = [os.path.join(root, folder)]
    while stack:
      d = stack.pop()
      try:
        mtime = os.stat(d).st_mtime_ns
        with os.scandir(d) as it:
          for e in it:
            if e.is_dir(follow_symlinks=True):
              stack.append(e.path)
            else:
              found.add(os.path.relpath(e.path, root))
      except FileNotFoundError:
        mtime = None
      if stamps is not None:
        stamps.append([os.path.relpath(d, root), mtime])
  return found


def _unchanged(root: str, stamps: list) -> bool:
  """True when every folder of a manifest's `stamps` has its recorded mtime (or is still
  absent): one stat per folder, not a listing of its files."""
  for rel, mtime in stamps:
    try:
      now = os.stat(os.path.join(root, rel)).st_mtime_ns
    except FileNotFoundError:
      now = None
    if now != mtime:
      return False
  return True


def _fingerprint(paths: list[str]) -> list[list[Any]]:
  out = []
  for p in paths:
    st = os.stat(p)
    out.append([p, st.st_size, st.st_mtime_ns])
  return out


def _manifest_paths(dataset, root: str, split: str, manifest_dir: str) -> list[str]:
  name = f'{dataset.name}-{split}.json'
  digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
  fallback = manifest_dir or os.path.join(os.path.expanduser('~'), '.cache', 'denseav_jax',
                                          'manifests')
  return [os.path.join(root, dataset.split_folder(split), _MANIFEST_DIR, name),
          os.path.join(fallback, digest, name)]


def _read_manifest(path: str, root: str, fingerprint) -> dict | None:
  try:
    with open(path) as f:
      m = json.load(f)
  except (OSError, ValueError):
    return None
  if (m.get('version') != MANIFEST_VERSION or m.get('fingerprint') != fingerprint
      or not _unchanged(root, m.get('folders', []))):
    return None
  return m


def index(dataset, root: str, split: str, *, manifest_dir: str = '',
          rescan: bool = False, tolerance: float | None = None,
          option_prefix: str = CONFIG_OPTIONS, warn: bool = True
          ) -> tuple[list, dict[str, Any]]:
  """The usable rows of `split` (listed, interpretable, every file present) and a summary.

  The presence check lists the data set's folders once; its result is cached as a manifest
  keyed by the metadata files' size and mtime and by the mtime of every folder listed, so
  later starts parse the metadata and stat those folders, and a start after files were
  added or removed lists them again. `tolerance` overrides the data set's allowed fraction
  of unusable rows. With `warn`, rows left out (missing files, unreadable rows) are one
  warning line.
  """
  rows, left_out = dataset.rows(root, split)
  fingerprint = _fingerprint(dataset.metadata_files(root, split))
  paths = _manifest_paths(dataset, root, split, manifest_dir)
  manifest, where = None, None
  for p in ([] if rescan else paths):
    manifest = _read_manifest(p, root, fingerprint)
    if manifest is not None and manifest.get('listed') == len(rows):
      where = p
      break
  if where is not None:
    present = np.unpackbits(np.frombuffer(base64.b64decode(manifest['present']), np.uint8),
                            count=len(rows)).astype(bool)
    summary = dict(manifest['summary'], manifest=where)
  else:
    t0 = time.time()
    folders: list = []
    files = list_files(root, dataset.scan_dirs(root, split), folders)
    present = np.zeros(len(rows), bool)
    missing: dict[str, int] = {}
    examples: list[str] = []
    for i, row in enumerate(rows):
      absent = [(role, rel) for role, rel in row.files if rel not in files]
      present[i] = not absent
      for role, rel in absent[:1]:
        missing[role] = missing.get(role, 0) + 1
        if len(examples) < 10:
          examples.append(os.path.join(root, rel))
    summary = dict(dataset=dataset.name, split=split, root=root,
                   listed=len(rows) + left_out.get('bad_row', 0), usable=int(present.sum()),
                   missing=missing, bad_rows=left_out.get('bad_row', 0),
                   filtered={k: v for k, v in left_out.items() if k != 'bad_row'},
                   first_missing=examples, scan_seconds=round(time.time() - t0, 3))
    manifest = dict(version=MANIFEST_VERSION, fingerprint=fingerprint, folders=folders,
                    listed=len(rows),
                    present=base64.b64encode(np.packbits(present).tobytes()).decode(),
                    summary=summary)
    for p in paths:
      try:
        io_lib.write_json(p, manifest)
        summary['manifest'] = p
        break
      except OSError:
        continue
    log.info('%s/%s: indexed %d rows in %.1f s (%d usable)%s', dataset.name, split,
             len(rows), time.time() - t0, int(present.sum()),
             f', manifest {summary.get("manifest")}' if summary.get('manifest') else '')
  tol = check_tolerance(dataset, split, summary, tolerance, option_prefix)
  if warn and summary['usable'] < summary['listed']:
    log.warning('%s', left_out_line(summary, tol))
  return [r for r, ok in zip(rows, present) if ok], summary


def left_out_line(summary: dict[str, Any], tolerance: float) -> str:
  """One line: how many listed rows were left out, why, and the tolerance they are within."""
  listed, usable = summary['listed'], summary['usable']
  missing = sum(summary['missing'].values())
  first = summary['first_missing'][:1]
  return (f'{summary["dataset"]}/{summary["split"]}: {listed - usable} of the {listed} listed '
          f'examples left out ({100 * (1 - usable / max(listed, 1)):.1f} %, within the '
          f'{100 * tolerance:.0f} % tolerated): {missing} with missing files '
          f'{dict(sorted(summary["missing"].items()))}, {summary["bad_rows"]} unreadable rows'
          + (f'; first missing: {first[0]}' if first else ''))


def check_tolerance(dataset, split: str, summary: dict[str, Any],
                    tolerance: float | None = None,
                    option_prefix: str = CONFIG_OPTIONS) -> float:
  """Raises DataError when more listed rows are unusable than tolerated; returns the
  tolerance applied (`tolerance`, else the data set's own for `split`)."""
  listed, usable = summary['listed'], summary['usable']
  tol = dataset.missing_tolerance.get(split, 0.0) if tolerance is None else tolerance
  if usable == 0:
    raise errors.DataError(
        f'{dataset.name}/{split}: none of the {listed} listed examples is usable '
        f'(missing files: {summary["missing"]}, unreadable rows: {summary["bad_rows"]}; '
        f'first missing: {summary["first_missing"][:3]}): check '
        f'{option_prefix}raw_dir={summary["root"]}')
  bad = 1.0 - usable / max(listed, 1)
  if bad > tol + 1e-12:
    raise errors.DataError(
        f'{dataset.name}/{split}: {listed - usable} of the {listed} listed examples are '
        f'unusable ({100 * bad:.1f} %; missing files by kind: {summary["missing"]}, '
        f'unreadable rows: {summary["bad_rows"]}), more than the {100 * tol:.0f} % this split '
        f'tolerates; first missing: {summary["first_missing"][:3]}. Complete the download, '
        f'or raise {option_prefix}max_missing_fraction (e.g. '
        f'{option_prefix}max_missing_fraction={min(1.0, bad + 0.005):.2f})')
  return tol
