"""Places Audio: 400k spoken captions of Places images (docs/data.md#places-audio).

Layout (inside the data root):
  PlacesAudio_400k_distro/metadata/{train,val}.json   {"data": [{"wav": "wavs/...wav",
                                                       "image": "b/beach/x.jpg", ...}, ...]}
  PlacesAudio_400k_distro/wavs/<id>.wav               the spoken caption
  places_subset/<image>                                the image (a sibling folder)
  PlacesAudio_400k_distro/metadata/word-alignment-train.json   [{"id", "word": [...],
                                                                 "start": [...], "end": [...]}]
  PlacesAudio_400k_distro/metadata/word-alignment-val.csv      ,id,word,start,end (a row a word)
The example id is the `wav` entry without its leading `wavs/` and trailing `.wav`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from denseav_jax.data import audio_io
from denseav_jax import errors
from denseav_jax.data import transforms
from denseav_jax.data.sources import base

FOLDER = 'PlacesAudio_400k_distro'
IMAGES = 'places_subset'


class PlacesAudio(base.Dataset):
  name = 'places_audio'
  folder = FOLDER
  splits = ('train', 'val')
  source_label = 0  # Speech.
  # The release trains on what exists of the listed files (it tolerates 97 % missing).
  missing_tolerance = {'train': 0.97, 'val': 0.97}
  description = 'Places Audio: spoken captions of Places205 images (Harwath et al.).'
  download = (f'Put the distributed folders {FOLDER}/ (metadata/train.json, metadata/val.json, '
              'the word alignments and wavs/) and places_subset/ (the images the metadata '
              'names) side by side in one folder and pass that folder.')

  def __init__(self, captions: bool = False):
    self.captions = captions  # Read the word alignments into the records.
    self._alignments: dict[str, dict[str, tuple]] = {}

  def marker(self, split: str) -> str:
    return os.path.join(FOLDER, 'metadata', f'{split}.json')

  def metadata_files(self, root: str, split: str) -> list[str]:
    return [os.path.join(root, self.marker(split))]

  def scan_dirs(self, root: str, split: str) -> list[str]:
    return [os.path.join(FOLDER, 'wavs'), IMAGES]

  def rows(self, root: str, split: str):
    path = os.path.join(root, self.marker(split))
    meta = base.load_json(path)
    entries = meta.get('data') if isinstance(meta, dict) else None
    if not isinstance(entries, list):
      raise errors.DataError(f'{path} has no "data" list: is this Places Audio\'s '
                             f'metadata/{split}.json?')
    rows, bad = [], 0
    for e in entries:
      wav, image = (e.get('wav'), e.get('image')) if isinstance(e, dict) else (None, None)
      if not (isinstance(wav, str) and isinstance(image, str) and len(wav) > 9):
        bad += 1
        continue
      ex_id = wav[5:-4]  # The release: strip 'wavs/' and '.wav'.
      rows.append(base.Row(ex_id, (('audio', os.path.join(FOLDER, 'wavs', ex_id + '.wav')),
                                   ('image', os.path.join(IMAGES, image))), (('split', split),)))
    return rows, ({'bad_row': bad} if bad else {})

  # ---------------------------------------------------------------- alignments
  def _alignment(self, root: str, split: str) -> dict[str, tuple]:
    key = os.path.join(root, split)
    if key not in self._alignments:
      self._alignments[key] = read_alignments(root, split)
    return self._alignments[key]

  def load_record(self, root: str, row: base.Row, channels: str) -> dict[str, Any]:
    audio_rel, image_rel = row.file('audio'), row.file('image')
    record = dict(
        id=row.id, audio=audio_io.load_pcm16(os.path.join(root, audio_rel), channels=channels),
        audio_path=audio_rel, image=base.read_file(root, image_rel), image_path=image_rel)
    if self.captions:
      words, start, end = self._alignment(root, row.info['split']).get(row.id, ((), (), ()))
      record.update(words=list(words), word_start=np.asarray(start, np.float32),
                    word_end=np.asarray(end, np.float32))
    return record

  # ------------------------------------------------------------------- records
  def features(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    return f.FeaturesDict({
        'id': f.Text(), 'audio_path': f.Text(), 'image_path': f.Text(),
        'image': f.Tensor(shape=(), dtype=np.object_),
        'audio': f.Tensor(shape=(None,), dtype=np.int16, encoding=f.Encoding.BYTES),
        'words': f.Tensor(shape=(None,), dtype=np.str_),
        'word_start': f.Tensor(shape=(None,), dtype=np.float32),
        'word_end': f.Tensor(shape=(None,), dtype=np.float32),
    })

  def decode(self, record, rng, where):
    del rng
    image = transforms.open_image(record['image'], path=where(record['image_path']))
    out = dict(id=record['id'], image=image, audio=audio_io.from_pcm16(record['audio']),
               source=self.source_label)
    if 'words' in record:
      out.update(words=list(record['words']), word_start=np.asarray(record['word_start']),
                 word_end=np.asarray(record['word_end']))
    return out


def read_alignments(root: str, split: str) -> dict[str, tuple]:
  """{example id: (words, starts, ends)} from the split's word-alignment file ({} if none)."""
  meta = os.path.join(root, FOLDER, 'metadata')
  out: dict[str, tuple] = {}
  json_path = os.path.join(meta, f'word-alignment-{split}.json')
  csv_path = os.path.join(meta, f'word-alignment-{split}.csv')
  if os.path.isfile(json_path):
    data = base.load_json(json_path)
    if isinstance(data, dict):  # Column orientation: {"id": {...}, "word": {...}, ...}.
      cols = {k: (list(v.values()) if isinstance(v, dict) else list(v)) for k, v in data.items()}
      data = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    for rec in data:
      try:
        words = [str(w) for w in rec['word']]
        out[str(rec['id'])] = (tuple(words), tuple(float(x) for x in rec['start']),
                               tuple(float(x) for x in rec['end']))
      except (KeyError, TypeError, ValueError):
        continue
  elif os.path.isfile(csv_path):
    header, rows = base.read_csv(csv_path)
    pos = base.require_columns(csv_path, header, ('id', 'word', 'start', 'end'))
    grouped: dict[str, list] = {}
    for r in rows:
      try:
        grouped.setdefault(r[pos['id']], []).append(
            (r[pos['word']], float(r[pos['start']]), float(r[pos['end']])))
      except (IndexError, ValueError):
        continue
    for k, items in grouped.items():
      w, s, e = zip(*items)
      out[k] = (w, s, e)
  return out
