"""Prepares a data set once: its raw layout -> sharded array_record files (docs/data.md#preparation).

  python -m denseav_jax.prepare --dataset places_audio --raw_dir /data --out_dir /prepared

Each data set has a tensorflow-datasets builder (`builder(name, out_dir)`): its features
(original image / label bytes, 16 kHz int16 audio as raw bytes, metadata), the raw folder as
`manual_dir` and download instructions naming the expected files. `prepare` writes what that
builder describes, shard by shard: each shard is written under a temporary name and renamed
when complete, with a small JSON record of what it kept and skipped, so a killed run
continues with the shards it had not finished; the TFDS metadata (dataset_info.json) is
written last, so readers (`tfds.builder_from_directory(...).as_data_source(split)`, the
pipeline's PreparedSource) never see a half-written data set. Reading needs no TensorFlow,
and neither does this writer. (The builder's own `download_and_prepare` also works on the
raw folder, but is not resumable and, past 1 GB, needs TensorFlow for its shuffler:
`pip install -e .[tfds_build]`.)

Faults are treated as in training: missing, empty, truncated or undecodable audio and images,
label maps of the wrong size and clips shorter than --min_audio_fraction of --clip_samples are
skipped, counted and listed in OUT/NAME/VERSION/prepare_summary.json.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import sys
import time
from typing import Any


from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.data import sources
from denseav_jax.data.sources import base

DEFAULT_CLIP_SAMPLES = 164_200  # The release's clip (10.26 s at 16 kHz).
_STATE = '.prepare'  # Per-shard completion records inside the version folder.
_MAX_LISTED_SKIPS = 1000  # Skipped files listed by name in the summary (all are counted).
# array_record options of a shard. Uncompressed by default: zstd saves ~20 % of the bytes
# (JPEGs and PCM compress little) but costs ~5x the time to read a record (0.54 against
# 0.11 ms for a 10 s Places Audio example on the 2-core development machine).
COMPRESSION = {'none': 'group_size:1,uncompressed', 'zstd': 'group_size:1,zstd:3',
               'snappy': 'group_size:1,snappy'}


# ------------------------------------------------------------------ TFDS builders

def builder(name: str, out_dir: str, max_missing_fraction: float | None = None):
  """The tensorflow-datasets builder of data set `name`, writing under `out_dir`
  (`max_missing_fraction`: as `prepare`'s)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = sources.dataset(name, **({'captions': True} if name == 'places_audio' else {}))

  class DenseAVBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds one DenseAV data set from its raw folder (manual_dir) as distributed."""
    VERSION = tfds.core.Version(base.PREPARED_VERSION)
    RELEASE_NOTES = {base.PREPARED_VERSION: 'Records as denseav_jax reads them.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = dataset.download
    code_path = None  # Nothing to download, so no checksums file to look for.

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=dataset.description,
                                   features=dataset.features(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(str(dl_manager.manual_dir), s) for s in dataset.splits}

    def _generate_examples(self, raw_dir, split):
      src = base.RawSource(dataset, raw_dir, split, option_prefix='--',
                           max_missing_fraction=max_missing_fraction)
      for i in range(len(src)):
        record = checked_record(src, i, DEFAULT_CLIP_SAMPLES, 0.04)
        if isinstance(record, dict):
          yield i, record

  DenseAVBuilder.name = name
  return DenseAVBuilder(data_dir=out_dir, file_format='array_record')


def checked_record(src: base.RawSource, index: int, clip_samples: int,
                   min_audio_fraction: float) -> dict[str, Any] | errors.BadExample:
  """The record of row `index`, or the BadExample that rules it out (every image decoded,
  label sizes checked, the clip long enough), as the training pipeline would."""
  try:
    record = src.record(index)
    src.dataset.check(record, lambda rel: os.path.join(src.root, rel))
    if len(record['audio']) < min_audio_fraction * clip_samples:
      raise errors.BadExample('short_audio', os.path.join(src.root, record['audio_path']),
                              f'{len(record["audio"])} samples, below {min_audio_fraction} of '
                              f'a {clip_samples}-sample clip')
    return record
  except errors.BadExample as e:
    return e


# ------------------------------------------------------------------------ writing

def _shard_path(version_dir: str, name: str, split: str, k: int, n: int) -> str:
  return os.path.join(version_dir, f'{name}-{split}.array_record-{k:05d}-of-{n:05d}')


def _done_path(version_dir: str, split: str, k: int) -> str:
  return os.path.join(version_dir, _STATE, f'{split}-{k:05d}.json')


_WORKER: dict[str, Any] = {}


def _worker_init(name, raw_dir, sizes, channels, manifest_dir, max_missing_fraction):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  dataset = sources.dataset(name, **({'captions': True} if name == 'places_audio' else {}))
  features = dataset.features()
  _WORKER.update(
      features=features,
      serializer=example_serializer.ExampleSerializer(features.get_serialized_info()),
      sources={s: base.RawSource(dataset, raw_dir, s, channels=channels,
                                 manifest_dir=manifest_dir, option_prefix='--',
                                 max_missing_fraction=max_missing_fraction, warn=False)
                for s in sizes},
      sizes=sizes)
  del tfds


def _write_shard(task) -> dict[str, Any]:
  """Writes one shard (in a worker process); returns its completion record."""
  name, version_dir, split, k, n, start, stop, clip_samples, min_fraction, options = task
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  src = _WORKER['sources'][split]
  if len(src) != _WORKER['sizes'][split]:  # Files added or removed since the plan.
    raise errors.DataError(
        f'the files of {name}/{split} in {src.root} changed during preparation '
        f'({_WORKER["sizes"][split]} usable examples at its start, {len(src)} now): run the '
        'same command again once the folder no longer changes')
  final = _shard_path(version_dir, name, split, k, n)
  tmp = f'{final}.tmp-{os.getpid()}'
  writer = array_record_module.ArrayRecordWriter(tmp, options)
  kept, nbytes, skipped = 0, 0, []
  t0 = time.time()
  try:
    for i in range(start, stop):
      record = checked_record(src, i, clip_samples, min_fraction)
      if isinstance(record, errors.BadExample):
        skipped.append([record.reason, record.path, record.detail])
        continue
      data = _WORKER['serializer'].serialize_example(_WORKER['features'].encode_example(record))
      writer.write(data)
      kept += 1
      nbytes += len(data)
  finally:
    writer.close()
  os.replace(tmp, final)
  done = dict(split=split, shard=k, num_shards=n, rows=[start, stop], kept=kept,
              num_bytes=nbytes, skipped=skipped, seconds=round(time.time() - t0, 3))
  io_lib.write_json(_done_path(version_dir, split, k), done)
  return done


@contextlib.contextmanager
def _runner(workers: int, init):
  """map over shards: in this process for one worker, else in a process pool (forked when
  nothing multithreaded such as JAX is loaded here, else spawned)."""
  if workers == 1:
    _worker_init(*init)
    yield map
    return
  method = 'spawn' if 'jax' in sys.modules or not sys.platform.startswith('linux') else 'fork'
  with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_worker_init, initargs=init) as pool:
    yield pool.map


def _fmt(seconds: float) -> str:
  s = int(max(seconds, 0))
  return f'{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}'


def prepare(name: str, raw_dir: str, out_dir: str, *, splits: list[str] | None = None,
            examples_per_shard: int = 1024, workers: int = 0, channels: str = 'first',
            clip_samples: int = DEFAULT_CLIP_SAMPLES, min_audio_fraction: float = 0.04,
            compression: str = 'none', manifest_dir: str = '',
            max_missing_fraction: float | None = None, rescan: bool = False, log=print,
            progress_every: float = 10.0) -> dict[str, Any]:
  """Prepares `splits` of data set `name`; returns the summary (also written as JSON).

  Resumable: shards already complete (their completion record exists) are not redone.
  `max_missing_fraction` (None or < 0: the data set's own tolerance) and `rescan` (index
  the raw folders again) are the raw reader's (`base.RawSource`); errors name the flags.
  """
  if name not in sources.DATASETS:
    raise errors.DataError(f'--dataset={name!r}: choose one of {sorted(sources.DATASETS)} '
                           "('mixed' reads the prepared places_audio and audioset)")
  dataset = sources.dataset(name)
  splits = list(splits or dataset.splits)
  for s in splits:
    if s not in dataset.splits:
      raise errors.DataError(f'{name} has no split {s!r}; its splits are {list(dataset.splits)}')
  if compression not in COMPRESSION:
    raise errors.DataError(f'--compression={compression!r}: use one of {sorted(COMPRESSION)}')
  if examples_per_shard < 1:
    raise errors.DataError(f'--examples_per_shard={examples_per_shard} must be >= 1')
  b = builder(name, out_dir, max_missing_fraction)
  version_dir = str(b.data_path)
  index = {s: base.RawSource(sources.dataset(name), raw_dir, s, channels=channels,
                             manifest_dir=manifest_dir, rescan=rescan, option_prefix='--',
                             max_missing_fraction=max_missing_fraction) for s in splits}
  root = next(iter(index.values())).root
  plan = dict(dataset=name, root=root, channels=channels, clip_samples=clip_samples,
              compression=compression,
              min_audio_fraction=min_audio_fraction, examples_per_shard=examples_per_shard,
              splits={s: len(src) for s, src in index.items()})
  plan_path = os.path.join(version_dir, _STATE, 'plan.json')
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      old = json.load(f)
    old_splits, new_splits = old.pop('splits', {}), plan['splits']
    same = {k: v for k, v in plan.items() if k != 'splits'} == old and all(
        old_splits.get(s) == n for s, n in new_splits.items() if s in old_splits)
    if not same:
      raise errors.DataError(
          f'{version_dir} holds a preparation with other settings ({plan_path}: {old}, '
          f'splits {old_splits}); continue it with the same flags, or use a new --out_dir')
    plan['splits'] = dict(old_splits, **new_splits)
  io_lib.write_json(plan_path, plan)
  # Temporaries of a killed run (one preparation at a time writes into a folder).
  for folder in (version_dir, os.path.join(version_dir, _STATE)):
    for n in os.listdir(folder):
      if '.tmp-' in n:
        os.remove(os.path.join(folder, n))

  tasks, done = [], {}
  for s, src in index.items():
    n = max(1, -(-len(src) // examples_per_shard))
    for k in range(n):
      start, stop = k * examples_per_shard, min(len(src), (k + 1) * examples_per_shard)
      path = _done_path(version_dir, s, k)
      if os.path.exists(path) and os.path.exists(_shard_path(version_dir, name, s, k, n)):
        with open(path) as f:
          done[(s, k)] = json.load(f)
      else:
        tasks.append((name, version_dir, s, k, n, start, stop, clip_samples, min_audio_fraction,
                      COMPRESSION[compression]))
  for s in plan['splits']:  # Splits an earlier run of this folder prepared.
    if s not in index:
      state = os.path.join(version_dir, _STATE)
      for n in sorted(os.listdir(state)):
        if n.startswith(f'{s}-') and n.endswith('.json'):
          with open(os.path.join(state, n)) as f:
            rec = json.load(f)
          done[(s, rec['shard'])] = rec
  total = sum(t[6] - t[5] for t in tasks)
  resumed = f', {len(done)} shard(s) already done' if done else ''
  log(f'prepare {name}: {sum(len(s) for s in index.values())} examples in '
      f'{len(tasks) + len(done)} shards ({", ".join(f"{s}: {len(x)}" for s, x in index.items())})'
      f' from {root} into {version_dir}{resumed}')
  workers = workers or max(1, min(os.cpu_count() or 1, len(tasks)))
  t0 = last = time.time()
  finished = kept = skipped = 0
  init = (name, raw_dir, {s: len(src) for s, src in index.items()}, channels, manifest_dir,
          max_missing_fraction)
  if tasks:
    with _runner(workers, init) as run:
      for result in run(_write_shard, tasks):
        done[(result['split'], result['shard'])] = result
        finished += result['rows'][1] - result['rows'][0]
        kept += result['kept']
        skipped += len(result['skipped'])
        now = time.time()
        if now - last >= progress_every or finished == total:
          rate = finished / max(now - t0, 1e-9)
          log(f'prepare {name}: {finished}/{total} examples ({100 * finished / max(total, 1):.1f} %)'
              f', {rate:.1f} ex/s, ETA {_fmt((total - finished) / max(rate, 1e-9))}, kept '
              f'{kept}, skipped {skipped}')
          last = now
  summary = _finish(b, name, version_dir, index, done, plan)
  log(f'prepare {name}: done in {_fmt(time.time() - t0)}; ' + '; '.join(
      f'{s}: kept {v["kept"]}, skipped {v["skipped"]} {v["skipped_by_reason"]}'
      for s, v in summary['splits'].items()) + f'. Summary: {summary["summary_file"]}')
  return summary


def _finish(b, name, version_dir, index, done, plan) -> dict[str, Any]:
  """Writes the TFDS metadata (last: it makes the data set readable) and the summary."""
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
  info = b.info
  split_infos, summary_splits = [], {}
  for s in sorted({k[0] for k in done} | set(index)):
    shards = sorted((v for (sp, _), v in done.items() if sp == s), key=lambda v: v['shard'])
    if not shards or len(shards) != shards[0]['num_shards']:
      continue  # A split prepared by another run and not finished there.
    template = naming.ShardedFileTemplate(
        data_dir=version_dir, dataset_name=name, split=s, filetype_suffix='array_record',
        template=naming.DEFAULT_FILENAME_TEMPLATE)
    split_infos.append(splits_lib.SplitInfo(
        name=s, shard_lengths=[v['kept'] for v in shards],
        num_bytes=sum(v['num_bytes'] for v in shards), filename_template=template))
    skips = [x for v in shards for x in v['skipped']]
    by_reason: dict[str, int] = {}
    for reason, _, _ in skips:
      by_reason[reason] = by_reason.get(reason, 0) + 1
    src = index.get(s)
    summary_splits[s] = dict(
        rows=plan['splits'].get(s), kept=sum(v['kept'] for v in shards), skipped=len(skips),
        skipped_by_reason=by_reason, shards=len(shards),
        index=src.summary if src is not None else None,
        skipped_files=[dict(reason=r, file=p, detail=d) for r, p, d in skips[:_MAX_LISTED_SKIPS]])
  info.set_splits(splits_lib.SplitDict(split_infos))
  summary_file = os.path.join(version_dir, 'prepare_summary.json')
  summary = dict(dataset=name, version_dir=version_dir, splits=summary_splits,
                 summary_file=summary_file)
  io_lib.write_json(summary_file, summary)
  info.write_to_directory(version_dir)
  return summary
