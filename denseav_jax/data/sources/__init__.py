"""Data sources by name: `make(config, split)` builds the source `config.data.name` names.

  synthetic                 the built-in procedural world      (data/synthetic/source.py)
  places_audio              Places Audio spoken captions           (places_audio.py)
  audioset                  AudioSet clips with sound tags         (audioset.py)
  mixed                     Places Audio or AudioSet, 1/2 each     (mixed.py)
  ade20k_speech_prompted    ADE20K Speech-Prompted evaluation set  (ade20k_prompted.py)
  ade20k_sound_prompted     ADE20K Sound-Prompted evaluation set   (ade20k_prompted.py)

A file-backed data set (a `base.Dataset`) is read from its raw layout
(`config.data.raw_dir`) or, when `config.data.prepared_dir` is set, from the records
`python -m denseav_jax.prepare` wrote there. Adding a data set is one new module
defining a `base.Dataset` and one line in DATASETS.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from denseav_jax import errors
from denseav_jax import io as io_lib
from denseav_jax.data.sources import ade20k_prompted
from denseav_jax.data.sources import audioset
from denseav_jax.data.sources import base
from denseav_jax.data.sources import mixed
from denseav_jax.data.sources import places_audio
from denseav_jax.data.synthetic import source as synthetic_source

DATASETS: dict[str, type[base.Dataset]] = {
    cls.name: cls for cls in (places_audio.PlacesAudio, audioset.AudioSet,
                              ade20k_prompted.ADE20KSpeechPrompted,
                              ade20k_prompted.ADE20KSoundPrompted)
}


def _synthetic(config, split, **kw):
  return synthetic_source.SyntheticSource(config, split, **kw)


def _mixed(config, split, **kw):
  del kw
  return mixed.MixedSource(file_source(config, 'places_audio', split),
                           file_source(config, 'audioset', split))


BUILDERS: dict[str, Callable[..., Any]] = {'synthetic': _synthetic, 'mixed': _mixed}


def names() -> list[str]:
  return sorted(set(DATASETS) | set(BUILDERS))


def dataset(name: str, **kw) -> base.Dataset:
  """The definition of a file-backed data set (DataError naming the choices if unknown)."""
  if name not in DATASETS:
    raise errors.DataError(f'no file-backed data set {name!r}; choose one of {sorted(DATASETS)}')
  return DATASETS[name](**kw)


def file_source(config, name: str, split: str, *, captions: bool = False):
  """A file-backed data set's split, prepared records if config.data.prepared_dir is set,
  else its raw layout under config.data.raw_dir."""
  d = config.data
  kw = {'captions': captions} if name == 'places_audio' else {}
  ds = dataset(name, **kw)
  if d.prepared_dir:
    return base.PreparedSource(ds, d.prepared_dir, split, cache_dir=d.cache_dir)
  if not d.raw_dir:
    raise errors.DataError(
        f'{name} needs data.raw_dir (the folder holding {ds.folder}/ as distributed) or '
        'data.prepared_dir (the --out_dir of python -m denseav_jax.prepare); '
        'see docs/data.md')
  return base.RawSource(ds, d.raw_dir, split, channels=d.audio_channels,
                        manifest_dir=d.manifest_dir, rescan=d.rescan,
                        max_missing_fraction=d.max_missing_fraction)


def check_location(config, name: str, paths: bool = True, where: str = 'config.data.name'
                   ) -> None:
  """Data set `name` (of `where`) can be found as config.data says: a known name and, with
  `paths` (the folders of this machine count), for a file-backed set data.prepared_dir or
  data.raw_dir set to an existing folder. Raises errors.ConfigError naming the key and what
  to set, before anything is read."""
  if name not in names():
    raise errors.ConfigError(f'{where}={name!r} is not a data set; choose one of {names()}')
  if not paths or (name in BUILDERS and name != 'mixed'):
    return
  d = config.data
  folder = '/'.join(dataset(n).folder for n in (
      ('places_audio', 'audioset') if name == 'mixed' else (name,)))
  if not d.prepared_dir and not d.raw_dir:
    raise errors.ConfigError(
        f'{where}={name!r} needs config.data.raw_dir (the folder holding {folder}/ as '
        'distributed) or config.data.prepared_dir (the --out_dir of python -m '
        'denseav_jax.prepare); see docs/data.md')
  key = 'prepared_dir' if d.prepared_dir else 'raw_dir'
  if not io_lib.isdir(d[key]):
    raise errors.ConfigError(f'config.data.{key}={d[key]} does not exist (it holds {name}): '
                             'check the path, or mount the data there')


def make(config, split: str, name: str | None = None, **kw):
  """The source of `split` for data set `name` (default config.data.name)."""
  name = name or config.data.name
  if name in BUILDERS:
    return BUILDERS[name](config, split, **kw)
  if name in DATASETS:
    return file_source(config, name, split, **kw)
  raise errors.DataError(f'config.data.name={name!r} is not a data set; choose one of {names()}')
