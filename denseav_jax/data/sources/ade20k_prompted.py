"""ADE20K Speech-Prompted and Sound-Prompted: the prompted-segmentation evaluation sets
released with DenseAV (docs/data.md#ade20k-prompted).

Layout (inside the data root), for ADE20KSpeechPrompted/ and ADE20KSoundPrompted/:
  prompted_segmentation.csv   image_location (relative to frames/), ade_class_id, and
                              speech_prompt_file + timing (speech: JSON [start, end] s of
                              the prompt word) or vggsound_file (sound)
  frames/<image_location>
  annotations/<image_location with .jpg -> _seg.png>   RGB label map,
                                                      class = (R // 10) * 256 + G
  audio/<basename of the prompt file>
Rows with an empty prompt file or ade_class_id 0 are left out, as the release does. Every
listed file must be present (an evaluation set must be complete to be comparable).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from denseav_jax.data import audio_io
from denseav_jax import errors
from denseav_jax.data import transforms
from denseav_jax.data.sources import base

NUM_CLASSES = 3662  # ADE20K's full class list.


class _Prompted(base.Dataset):
  splits = ('val',)
  missing_tolerance = {'val': 0.0}
  prompt_column = ''
  timed = False

  @property
  def download(self) -> str:  # type: ignore[override]
    return (f'Put the released {self.folder}/ folder (prompted_segmentation.csv, frames/, '
            'annotations/, audio/) in one folder and pass that folder.')

  def marker(self, split: str) -> str:
    return os.path.join(self.folder, 'prompted_segmentation.csv')

  def metadata_files(self, root: str, split: str) -> list[str]:
    return [os.path.join(root, self.marker(split))]

  def scan_dirs(self, root: str, split: str) -> list[str]:
    return [os.path.join(self.folder, d) for d in ('frames', 'annotations', 'audio')]

  def rows(self, root: str, split: str):
    path = os.path.join(root, self.marker(split))
    needed = ('image_location', 'ade_class_id', self.prompt_column) + (
        ('timing',) if self.timed else ())
    header, table = base.read_csv(path)
    pos = base.require_columns(path, header, needed)
    rows, left_out = [], {}

    def leave_out(reason):
      left_out[reason] = left_out.get(reason, 0) + 1

    for n, r in enumerate(table):
      try:
        loc, prompt = r[pos['image_location']].strip(), r[pos[self.prompt_column]].strip()
        class_id = int(float(r[pos['ade_class_id']]))
      except (IndexError, ValueError):
        leave_out('bad_row')
        continue
      if not prompt:
        leave_out('no_prompt')  # The release keeps only rows with a prompt file...
        continue
      if class_id == 0:
        leave_out('class_zero')  # ...and a class.
        continue
      timing = None
      if self.timed:
        try:
          timing = [float(x) for x in json.loads(r[pos['timing']])]
          if len(timing) != 2:
            raise ValueError
        except (ValueError, TypeError):
          leave_out('bad_row')
          continue
      files = (('image', os.path.join(self.folder, 'frames', loc)),
               ('label', os.path.join(self.folder, 'annotations',
                                      loc.replace('.jpg', '_seg.png'))),
               ('audio', os.path.join(self.folder, 'audio', os.path.basename(prompt))))
      meta = (('class_id', class_id), ('prompt_file', prompt), ('row', n)) + (
          (('timing', tuple(timing)),) if timing is not None else ())
      rows.append(base.Row(loc, files, meta))
    return rows, left_out

  def load_record(self, root: str, row: base.Row, channels: str) -> dict[str, Any]:
    info = row.info
    rec = dict(
        id=row.id, image=base.read_file(root, row.file('image')), image_path=row.file('image'),
        label=base.read_file(root, row.file('label')), label_path=row.file('label'),
        audio=audio_io.load_pcm16(os.path.join(root, row.file('audio')), channels=channels),
        audio_path=row.file('audio'), class_id=np.int32(info['class_id']),
        prompt_file=info['prompt_file'])
    if self.timed:
      rec['timing'] = np.asarray(info['timing'], np.float32)
    return rec

  def features(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    spec = {
        'id': f.Text(), 'image_path': f.Text(), 'label_path': f.Text(), 'audio_path': f.Text(),
        'prompt_file': f.Text(),
        'image': f.Tensor(shape=(), dtype=np.object_),
        'label': f.Tensor(shape=(), dtype=np.object_),
        'audio': f.Tensor(shape=(None,), dtype=np.int16, encoding=f.Encoding.BYTES),
        'class_id': f.Scalar(dtype=np.int32),
    }
    if self.timed:
      spec['timing'] = f.Tensor(shape=(2,), dtype=np.float32)
    return f.FeaturesDict(spec)

  def decode(self, record, rng, where):
    del rng
    image = transforms.open_image(record['image'], path=where(record['image_path']))
    label_path = where(record['label_path'])
    label = transforms.open_image(record['label'], path=label_path)
    if label.size != image.size:
      raise errors.BadExample('label_size', label_path, f'label map {label.size[0]}x'
                              f'{label.size[1]} but image {image.size[0]}x{image.size[1]}')
    out = dict(id=record['id'], image=image, label=label,
               audio=audio_io.from_pcm16(record['audio']), class_id=int(record['class_id']),
               source=self.source_label)
    if self.timed:
      out['timing'] = np.asarray(record['timing'], np.float32)
    return out


class ADE20KSpeechPrompted(_Prompted):
  name = 'ade20k_speech_prompted'
  folder = 'ADE20KSpeechPrompted'
  source_label = 0
  prompt_column = 'speech_prompt_file'
  timed = True
  description = 'ADE20K Speech-Prompted: images, label maps and a spoken prompt naming a class.'


class ADE20KSoundPrompted(_Prompted):
  name = 'ade20k_sound_prompted'
  folder = 'ADE20KSoundPrompted'
  source_label = 1
  prompt_column = 'vggsound_file'
  description = 'ADE20K Sound-Prompted: images, label maps and a VGGSound clip of a class.'
