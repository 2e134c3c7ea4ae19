"""AudioSet: YouTube clips with multi-hot sound tags (docs/data.md#audioset).

Layout (inside the data root):
  audioset-raw/metadata/unbalanced_train_segments.csv   YTID, start_seconds, end_seconds,
                                                        positive_labels (train)
  audioset-raw/metadata/class_labels_indices.csv        index, mid, display_name (527 classes)
  audioset-raw/audio/<id>.mp3
  audioset-raw/frames/frame_<k>/<id>.jpg                k = 0..9
  audioset-eval/metadata/eval_segments_subset.csv       the evaluation copy ('val')
  audioset-eval/audio/<id>.mp3, audioset-eval/frames/<id>_<k>.jpg
The segment files are read as AudioSet distributes them (three '#' lines, ', ' separators)
or with a plain header row. The example id is `{YTID}_{start}_{end}` with the seconds as
parsed floats (`30.000` -> `30.0`). One of the ten frames is chosen at random per example
(frame k shows the clip at (k + 0.5) / 10 of its length).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from denseav_jax.data import audio_io
from denseav_jax import errors
from denseav_jax.data import transforms
from denseav_jax.data.sources import base

TRAIN_FOLDER = 'audioset-raw'
EVAL_FOLDER = 'audioset-eval'
NUM_FRAMES = 10
_SEGMENTS = {'train': (TRAIN_FOLDER, 'unbalanced_train_segments.csv'),
             'val': (EVAL_FOLDER, 'eval_segments_subset.csv')}
_LABELS = 'class_labels_indices.csv'


def _seconds(text: str) -> str:
  return str(float(text))


class AudioSet(base.Dataset):
  name = 'audioset'
  folder = TRAIN_FOLDER
  splits = ('train', 'val')
  source_label = 1  # Sound.
  missing_tolerance = {'train': 0.17, 'val': 0.02}  # The release's tolerances.
  description = 'AudioSet: 10 s YouTube clips with 527 multi-hot sound tags (Gemmeke et al.).'
  download = (f'Put {TRAIN_FOLDER}/ (metadata/unbalanced_train_segments.csv, '
              'metadata/class_labels_indices.csv, audio/<id>.mp3, frames/frame_<k>/<id>.jpg) '
              f'and {EVAL_FOLDER}/ (metadata/eval_segments_subset.csv, audio/<id>.mp3, '
              'frames/<id>_<k>.jpg) side by side in one folder and pass that folder.')

  def marker(self, split: str) -> str:
    folder, name = _SEGMENTS[split]
    return os.path.join(folder, 'metadata', name)

  def split_folder(self, split: str) -> str:
    return _SEGMENTS[split][0]

  def _labels_file(self, root: str, split: str) -> str:
    own = os.path.join(root, _SEGMENTS[split][0], 'metadata', _LABELS)
    return own if os.path.isfile(own) else os.path.join(root, TRAIN_FOLDER, 'metadata', _LABELS)

  def metadata_files(self, root: str, split: str) -> list[str]:
    return [os.path.join(root, self.marker(split)), self._labels_file(root, split)]

  def scan_dirs(self, root: str, split: str) -> list[str]:
    folder = _SEGMENTS[split][0]
    return [os.path.join(folder, 'audio'), os.path.join(folder, 'frames')]

  def frame_paths(self, split: str, ex_id: str) -> list[str]:
    if split == 'train':
      return [os.path.join(TRAIN_FOLDER, 'frames', f'frame_{k}', f'{ex_id}.jpg')
              for k in range(NUM_FRAMES)]
    return [os.path.join(EVAL_FOLDER, 'frames', f'{ex_id}_{k}.jpg') for k in range(NUM_FRAMES)]

  def labels(self, root: str, split: str) -> dict[str, int]:
    path = self._labels_file(root, split)
    if not os.path.isfile(path):
      raise errors.DataError(f'audioset: expected the class list {path} (index, mid, '
                             'display_name), as AudioSet distributes it')
    header, rows = base.read_csv(path)
    pos = base.require_columns(path, header, ('index', 'mid'))
    try:
      return {r[pos['mid']]: int(r[pos['index']]) for r in rows}
    except (IndexError, ValueError) as e:
      raise errors.DataError(f'{path}: a row is not "index,mid,display_name" ({e})') from None

  def rows(self, root: str, split: str):
    mids = self.labels(root, split)
    num_tags = max(mids.values()) + 1
    path = os.path.join(root, self.marker(split))
    header, table = base.read_csv(path)
    pos = base.require_columns(path, header, ('YTID', 'start_seconds', 'end_seconds',
                                              'positive_labels'))
    folder = _SEGMENTS[split][0]
    rows, left_out = [], {}
    for r in table:
      try:
        ytid, start, end = r[pos['YTID']], r[pos['start_seconds']], r[pos['end_seconds']]
        ex_id = f'{ytid}_{_seconds(start)}_{_seconds(end)}'
        labels = [m.strip() for m in r[pos['positive_labels']].strip('"').split(',') if m.strip()]
      except (IndexError, ValueError):
        left_out['bad_row'] = left_out.get('bad_row', 0) + 1
        continue
      unknown = [m for m in labels if m not in mids]
      if unknown:  # Kept without them (the class list is the model's label space).
        left_out['unknown_labels'] = left_out.get('unknown_labels', 0) + len(unknown)
      tags = sorted({mids[m] for m in labels if m in mids})
      files = (('audio', os.path.join(folder, 'audio', f'{ex_id}.mp3')),) + tuple(
          (f'frame_{k}', p) for k, p in enumerate(self.frame_paths(split, ex_id)))
      rows.append(base.Row(ex_id, files, (('tags', tuple(tags)), ('num_tags', num_tags))))
    return rows, left_out

  def load_record(self, root: str, row: base.Row, channels: str) -> dict[str, Any]:
    info = row.info
    audio_rel = row.file('audio')
    frame_rel = [row.file(f'frame_{k}') for k in range(NUM_FRAMES)]
    return dict(
        id=row.id, audio=audio_io.load_pcm16(os.path.join(root, audio_rel), channels=channels),
        audio_path=audio_rel, frames=[base.read_file(root, p) for p in frame_rel],
        frame_paths=frame_rel, tags=np.asarray(info['tags'], np.int32),
        num_tags=np.int32(info['num_tags']))

  def features(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    f = tfds.features
    return f.FeaturesDict({
        'id': f.Text(), 'audio_path': f.Text(),
        'audio': f.Tensor(shape=(None,), dtype=np.int16, encoding=f.Encoding.BYTES),
        'frames': f.Tensor(shape=(NUM_FRAMES,), dtype=np.object_),
        'frame_paths': f.Tensor(shape=(NUM_FRAMES,), dtype=np.str_),
        'tags': f.Tensor(shape=(None,), dtype=np.int32),
        'num_tags': f.Scalar(dtype=np.int32),
    })

  def check(self, record, where) -> None:
    for data, rel in zip(record['frames'], record['frame_paths']):
      transforms.open_image(data, path=where(rel))

  def decode(self, record, rng, where):
    k = int(rng.integers(NUM_FRAMES))
    image = transforms.open_image(record['frames'][k],
                                  path=where(record['frame_paths'][k]))
    tags = np.zeros(int(record['num_tags']), np.uint8)
    tags[np.asarray(record['tags'], np.int64)] = 1
    return dict(id=record['id'], image=image, audio=audio_io.from_pcm16(record['audio']),
                source=self.source_label, tags=tags, frame=k)
