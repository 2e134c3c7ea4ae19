"""What every data set shares: its definition and the two readers.

A data set module defines a `Dataset` subclass (its folder, splits, metadata parsing, file
layout, record schema and decoding) and registers it by name. Two readers give random
access to one split, with identical results:

  RawSource(dataset, raw_dir, split)          the files as distributed
  PreparedSource(dataset, prepared_dir, split) the array_record files of
                                               `python -m denseav_jax.prepare`

Both produce *records* (what preparation stores: original image/label bytes, 16 kHz
int16 audio, metadata) and *examples* (`read(index, rng)`: records decoded, images as RGB
PIL images, audio float32). `rng` makes the choices a record leaves open (AudioSet: which
of the ten frames), so an example is a pure function of (index, rng).

The raw reader's index of listed-and-present files, cached as a small manifest, is
`manifest.py`'s. Errors name a setting the way the running command takes it
(`option_prefix`: '--config.data.' for train and evaluate, '--' for prepare's flags).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable

import numpy as np

from denseav_jax.data import audio_io
from denseav_jax.data.sources import manifest
from denseav_jax.data.sources import staging
from denseav_jax import errors
from denseav_jax import io as io_lib

PREPARED_VERSION = '1.0.0'


@dataclasses.dataclass(frozen=True)
class Row:
  """One metadata row of a raw layout: its id, its files (role -> path relative to the
  data root) and the metadata the record keeps (json-able values)."""
  id: str
  files: tuple[tuple[str, str], ...]
  meta: tuple[tuple[str, Any], ...] = ()

  def file(self, role: str) -> str:
    return dict(self.files)[role]

  @property
  def info(self) -> dict[str, Any]:
    return dict(self.meta)


class Dataset:
  """A data set's definition (subclasses fill in the class attributes and methods)."""

  name: str = ''
  folder: str = ''  # Its folder inside the data root, as distributed.
  splits: tuple[str, ...] = ()
  source_label: int = 0  # 0 speech, 1 sound (the disentanglement loss's label).
  missing_tolerance: dict[str, float] = {}  # split -> fraction of rows allowed to be unusable.
  description: str = ''
  download: str = ''  # Where to get the files and where to put them (prepare's instructions).

  # ----------------------------------------------------------------- raw layout
  def marker(self, split: str) -> str:
    """The file (relative to the data root) that must exist for `split`."""
    raise NotImplementedError

  def split_folder(self, split: str) -> str:
    """The folder (inside the data root) holding `split` (its manifest is kept there)."""
    return self.folder

  def metadata_files(self, root: str, split: str) -> list[str]:
    """Absolute paths of the metadata files `rows` parses (their size/mtime key the manifest)."""
    raise NotImplementedError

  def rows(self, root: str, split: str) -> tuple[list[Row], dict[str, int]]:
    """Parses the metadata: (rows in file order, {reason: count} of rows left out).

    'bad_row' counts rows that cannot be interpreted (they count as unusable); any other
    key is reported only: rows a data set's own rules filter out (e.g. ADE20K rows without a
    prompt) or parts of rows it leaves out (AudioSet labels missing from the class list).
    """
    raise NotImplementedError

  def scan_dirs(self, root: str, split: str) -> list[str]:
    """Folders (relative to root) whose files `rows` refers to; listed once per index."""
    raise NotImplementedError

  def load_record(self, root: str, row: Row, channels: str) -> dict[str, Any]:
    """Reads one row's files into a record (raises errors.BadExample)."""
    raise NotImplementedError

  # ------------------------------------------------------------------- records
  def features(self):
    """The tensorflow-datasets FeaturesDict of a record."""
    raise NotImplementedError

  def decode(self, record: dict[str, Any], rng: np.random.Generator,
             where: Callable[[str], str]) -> dict[str, Any]:
    """A record -> an example (decoded image(s), float32 audio, metadata). `where` turns a
    record's relative file path into the name errors give it."""
    raise NotImplementedError

  def check(self, record: dict[str, Any], where: Callable[[str], str]) -> None:
    """Raises errors.BadExample if any part of the record cannot be used (preparation
    checks every image; decoding an example reads only the ones it uses)."""
    self.decode(record, np.random.default_rng(0), where)

  # --------------------------------------------------------------------- shared
  def locate(self, raw_dir: str, split: str,
             option_prefix: str = manifest.CONFIG_OPTIONS) -> str:
    """The data root (the folder holding `self.folder`) for `raw_dir`, which may be that
    root or the data set's own folder. DataError naming the expected file otherwise."""
    raw_dir = os.path.abspath(os.path.expanduser(raw_dir))
    marker = self.marker(split)
    for root in (raw_dir, os.path.dirname(raw_dir)):
      if os.path.isfile(os.path.join(root, marker)):
        return root
    if not os.path.isdir(raw_dir):
      raise errors.DataError(f'{option_prefix}raw_dir={raw_dir} does not exist: set it to the '
                             f'folder that holds {self.folder}/ (see docs/data.md)')
    raise errors.DataError(
        f'{self.name} ({split}): expected {os.path.join(raw_dir, marker)} (the layout as '
        f'distributed: {self.folder}/ inside {option_prefix}raw_dir), but it is not there; '
        f'{raw_dir} holds {_listing(raw_dir)}. See docs/data.md#{self.name.replace("_", "-")}')


def _listing(folder: str, limit: int = 8) -> str:
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return 'nothing readable'
  shown = ', '.join(names[:limit]) + (' ...' if len(names) > limit else '')
  return f'[{shown}]' if names else 'nothing'


# --------------------------------------------------------------------------- readers

class RawSource:
  """Random access to one split of a data set read from its raw layout."""

  def __init__(self, dataset: Dataset, raw_dir: str, split: str, *, channels: str = 'first',
               manifest_dir: str = '', rescan: bool = False,
               max_missing_fraction: float | None = None,
               option_prefix: str = manifest.CONFIG_OPTIONS, warn: bool = True):
    """`max_missing_fraction` (None or < 0: the data set's own tolerance) and `warn`: see
    `manifest.index`; `option_prefix`: how errors name the settings (the module doc)."""
    if split not in dataset.splits:
      raise errors.DataError(f'{dataset.name} has no split {split!r}; its splits are '
                             f'{list(dataset.splits)}')
    if channels not in audio_io.CHANNEL_MODES:
      raise errors.DataError(f'{option_prefix}audio_channels={channels!r}: use one of '
                             f'{audio_io.CHANNEL_MODES}')
    self.dataset, self.split, self.channels = dataset, split, channels
    self.root = dataset.locate(raw_dir, split, option_prefix)
    tolerance = (max_missing_fraction if max_missing_fraction is not None
                 and max_missing_fraction >= 0 else None)
    self.rows, self.summary = manifest.index(
        dataset, self.root, split, manifest_dir=manifest_dir, rescan=rescan,
        tolerance=tolerance, option_prefix=option_prefix, warn=warn)

  def __len__(self) -> int:
    return len(self.rows)

  def __repr__(self) -> str:
    return f'RawSource({self.dataset.name}/{self.split}, {len(self)} examples, {self.root})'

  def where(self, index: int) -> str:
    return f'{self.dataset.name}/{self.split} #{index} ({self.rows[index].id})'

  def record(self, index: int) -> dict[str, Any]:
    return self.dataset.load_record(self.root, self.rows[int(index)], self.channels)

  def read(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    return self.dataset.decode(self.record(index), rng,
                               lambda rel: os.path.join(self.root, rel))

  def audio(self, index: int) -> np.ndarray:
    """Only the audio of example `index` (float32 at 16 kHz), e.g. for splicing."""
    rel = self.rows[int(index)].file('audio')
    return audio_io.load(os.path.join(self.root, rel), channels=self.channels)


class PreparedSource:
  """Random access to one split of a prepared data set (tensorflow-datasets array_record).

  The TFDS data source is opened lazily, so the object pickles as its path (Grain worker
  processes open their own).
  """

  def __init__(self, dataset: Dataset, prepared_dir: str, split: str, cache_dir: str = ''):
    self.dataset, self.split = dataset, split
    self.path = prepared_path(prepared_dir, dataset.name)
    info = os.path.join(self.path, 'dataset_info.json')
    if not io_lib.exists(info):
      partial = io_lib.isdir(self.path) or io_lib.isdir(os.path.dirname(self.path))
      raise errors.DataError(
          f'no prepared {dataset.name} in data.prepared_dir={prepared_dir}: expected {info}'
          + (' (a preparation there is unfinished: run the same prepare command again to '
             'finish it)' if partial else '')
          + f'. Prepare it with: python -m denseav_jax.prepare --dataset {dataset.name} '
          f'--raw_dir RAW --out_dir {prepared_dir}')
    splits = [s['name'] for s in json.loads(io_lib.read_text(info)).get('splits', [])]
    if split not in splits:
      raise errors.DataError(f'{self.path} holds the splits {splits}, not {split!r}: run '
                             f'prepare with --splits {split}')
    # Records on a bucket are read from a local copy (sources/staging.py).
    self.path = staging.local_copy(self.path, split, cache_dir)
    self._length = None
    self._ds = None

  def _source(self):
    if self._ds is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._ds = tfds.builder_from_directory(self.path).as_data_source(self.split)
    return self._ds

  def __getstate__(self):
    return dict(self.__dict__, _ds=None)

  def __len__(self) -> int:
    if self._length is None:
      self._length = len(self._source())
    return self._length

  def __repr__(self) -> str:
    return f'PreparedSource({self.dataset.name}/{self.split}, {self.path})'

  def where(self, index: int) -> str:
    return f'prepared {self.dataset.name}/{self.split} #{index} ({self.path})'

  def record(self, index: int) -> dict[str, Any]:
    return from_stored(self._source()[int(index)])

  def read(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    return self.dataset.decode(self.record(index), rng,
                               lambda rel: f'{rel} (in {self.where(index)})')

  def audio(self, index: int) -> np.ndarray:
    return audio_io.from_pcm16(self.record(index)['audio'])


def prepared_path(prepared_dir: str, name: str) -> str:
  root = prepared_dir if io_lib.is_url(prepared_dir) else os.path.expanduser(prepared_dir)
  return os.path.join(io_lib.absolute(root), name, PREPARED_VERSION)


def from_stored(stored: dict[str, Any]) -> dict[str, Any]:
  """A record as TFDS returns it -> the reader's record: text as str, lists as lists."""
  out = {}
  for k, v in stored.items():
    if isinstance(v, bytes) and k in TEXT_FIELDS:
      v = v.decode('utf-8')
    elif isinstance(v, np.ndarray) and v.dtype == object:
      v = [x.decode('utf-8') if k in TEXT_FIELDS else x for x in v.tolist()]
    out[k] = v
  return out


# Record fields holding text (TFDS hands them back as bytes).
TEXT_FIELDS = frozenset({'id', 'audio_path', 'image_path', 'label_path', 'frame_paths',
                         'words', 'prompt_file'})


def read_file(root: str, rel: str) -> bytes:
  """The bytes of root/rel; BadExample('missing' / 'empty') when there are none."""
  path = os.path.join(root, rel)
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise errors.BadExample('missing', path, 'no such file') from None
  except OSError as e:
    raise errors.BadExample('undecodable', path, str(e)) from None
  if not data:
    raise errors.BadExample('empty', path, 'the file has 0 bytes')
  return data


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
  """(column names, rows) of a CSV file; DataError naming the file if it cannot be read.

  Also reads AudioSet's distributed segment files: leading '#' lines (the last one names
  the columns) and ', ' separators.
  """
  import csv  # pylint: disable=g-import-not-at-top
  try:
    with open(path, newline='', encoding='utf-8') as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise errors.DataError(f'cannot read {path}: {e}') from None
  comments = []
  while lines and lines[0].startswith('#'):
    comments.append(lines.pop(0))
  parsed = list(csv.reader(lines, skipinitialspace=True))
  named = (next(csv.reader([comments[-1].lstrip('#')], skipinitialspace=True))
           if comments else [])
  if len(named) > 1 and (not parsed or [c.strip() for c in parsed[0]] != named):
    header = named  # The last comment line names the columns; no header row follows.
  elif parsed:
    header = parsed.pop(0)
  else:
    raise errors.DataError(f'{path} is empty: it needs a header row')
  header = [h.strip() for h in header]
  return header, [r for r in parsed if r]


def require_columns(path: str, header: list[str], needed: Iterable[str]) -> dict[str, int]:
  """{column: position}; DataError naming the file and the missing columns otherwise."""
  pos = {h: i for i, h in enumerate(header)}
  missing = [c for c in needed if c not in pos]
  if missing:
    raise errors.DataError(f'{path} has no column(s) {missing} (its columns: {header}): '
                           'is this the file as distributed?')
  return pos


def load_json(path: str):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise errors.DataError(f'{path} not found') from None
  except (OSError, ValueError) as e:
    raise errors.DataError(f'{path} is not readable JSON ({e})') from None
