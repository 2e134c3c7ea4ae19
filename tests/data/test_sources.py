"""The data sets read from fixture copies of their real layouts: what each source yields
against what the fixture wrote, the index and its manifest, faults, layout errors, and
preparation (resumable, and read back equal to the raw layout)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax import io as io_lib
from denseav_jax.data import audio_io
from denseav_jax import errors
from denseav_jax.testing import fixtures
from denseav_jax.data import prepare
from denseav_jax.data import sources
from denseav_jax.data import transforms
from denseav_jax.data.sources import base
from denseav_jax.data.sources import manifest

SR = 16000
BAD_STATUS = {'truncated_audio': ('truncated',), 'empty_audio': ('empty',),
              'bad_audio': ('undecodable',), 'bad_image': ('undecodable',),
              'label_size': ('label_size',)}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """One data root holding every data set's fixture, as the release's data folder does."""
  r = str(tmp_path_factory.mktemp('data'))
  return dict(root=r, places=fixtures.places_audio(r), audioset=fixtures.audioset(
      r, num_train=6, num_val=4, seconds=(1.0, 1.5)),
              speech=fixtures.ade20k_prompted(r, 'speech'),
              sound=fixtures.ade20k_prompted(r, 'sound'))


def _expected_audio(entry):
  """What the reader must give: first channel, at 16 kHz, on the int16 grid."""
  x = entry.audio[:, 0]
  return audio_io.from_pcm16(audio_io.to_pcm16(audio_io.resample(x, entry.sample_rate, SR)))


def _raw(name, data_root, split, **kw):
  return base.RawSource(sources.dataset(name, **kw), data_root, split)


def _by_id(src):
  return {row.id: i for i, row in enumerate(src.rows)}


def _check_faults(src, entries, rng):
  """Every planted fault raises BadExample with its reason, naming its file."""
  ids = _by_id(src)
  for e in entries:
    if e.status in BAD_STATUS:
      with pytest.raises(errors.BadExample) as err:
        src.read(ids[e.id], rng)
      assert err.value.reason in BAD_STATUS[e.status], (e.status, err.value)
      assert os.path.isabs(err.value.path.split(' ')[0]) and os.path.exists(
          err.value.path.split(' ')[0]), err.value.path


# ------------------------------------------------------------------------ data sets

@pytest.mark.parametrize('split', ['train', 'val'])
def test_places_audio_raw(root, split):
  fx = root['places']
  src = _raw('places_audio', root['root'], split, captions=True)
  entries = fx.entries[split]
  missing = {e.id for e in entries if e.status in ('missing_audio', 'missing_image')}
  assert {r.id for r in src.rows} == {e.id for e in entries} - missing
  s = src.summary
  assert s['listed'] == len(entries) and s['usable'] == len(entries) - len(missing)
  assert sum(s['missing'].values()) == len(missing)
  rng = np.random.default_rng(0)
  ids = _by_id(src)
  for e in fx.ok(split):
    ex = src.read(ids[e.id], rng)
    assert ex['id'] == e.id and ex['source'] == 0
    np.testing.assert_array_equal(np.asarray(ex['image']), e.image)
    np.testing.assert_array_equal(ex['audio'], _expected_audio(e))
    assert list(ex['words']) == list(e.meta['words'])
    np.testing.assert_allclose(ex['word_start'], e.meta['starts'], atol=1e-6)
    np.testing.assert_allclose(ex['word_end'], e.meta['ends'], atol=1e-6)
  _check_faults(src, entries, rng)


def test_places_audio_without_captions_and_audio_only(root):
  src = _raw('places_audio', root['root'], 'train')
  e = root['places'].ok('train')[0]
  i = _by_id(src)[e.id]
  assert 'words' not in src.record(i)
  np.testing.assert_array_equal(src.audio(i), _expected_audio(e))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_audioset_raw(root, split):
  fx = root['audioset']
  src = _raw('audioset', root['root'], split)
  entries = fx.entries[split]
  gone = {e.id for e in entries if e.status in ('missing_audio', 'missing_frame')}
  assert {r.id for r in src.rows} == {e.id for e in entries} - gone
  for e in entries:  # Ids use the seconds as parsed floats.
    m = e.meta
    assert e.id == f'{m["ytid"]}_{float(m["start_seconds"])}_{float(m["end_seconds"])}'
  ids = _by_id(src)
  seen_frames = set()
  for n, e in enumerate(fx.ok(split) + [x for x in entries if x.status == 'unknown_label']):
    for seed in range(3):
      ex = src.read(ids[e.id], np.random.default_rng([seed, n]))
      k = ex['frame']
      seen_frames.add(k)
      np.testing.assert_array_equal(np.asarray(ex['image']), e.frames[k])
      assert ex['tags'].shape == (527,) and ex['tags'].dtype == np.uint8
      np.testing.assert_array_equal(np.nonzero(ex['tags'])[0], e.meta['tags'])
      np.testing.assert_array_equal(ex['audio'], _expected_audio(e))
      assert ex['source'] == 1
  assert len(seen_frames) > 3  # A random one of the ten frames.
  if split == 'train':
    assert src.summary['filtered'].get('unknown_labels', 0) >= 1
  _check_faults(src, [e for e in entries if e.status != 'bad_image'], np.random.default_rng(0))
  bad = [e for e in entries if e.status == 'bad_image']
  for e in bad:  # The damaged frame fails when it is the one chosen, and in preparation.
    rec = src.record(ids[e.id])
    with pytest.raises(errors.BadExample, match='undecodable'):
      src.dataset.check(rec, lambda rel: rel)


@pytest.mark.parametrize('kind', ['speech', 'sound'])
def test_ade20k_prompted_raw_yields_what_segmentation_needs(root, kind):
  fx = root[kind]
  name = f'ade20k_{kind}_prompted'
  src = _raw(name, root['root'], 'val')
  entries = fx.entries['val']
  dropped = {e.meta['row'] for e in entries if e.status in ('no_prompt', 'class_zero')}
  assert len(src) == len(entries) - len(dropped)
  assert src.summary['filtered'] == {'no_prompt': 1, 'class_zero': 1}
  rows = [e for e in entries if e.meta['row'] not in dropped]
  rng = np.random.default_rng(0)
  for i, e in enumerate(rows):  # The CSV's order is kept.
    assert src.rows[i].id == e.meta['image_location']
    if e.status != 'ok':
      continue
    ex = src.read(i, rng)
    np.testing.assert_array_equal(np.asarray(ex['image']), e.image)
    np.testing.assert_array_equal(transforms.decode_ade_label(np.asarray(ex['label'])), e.label)
    assert ex['class_id'] == e.meta['class_id'] and (e.label == e.meta['class_id']).any()
    np.testing.assert_array_equal(ex['audio'], _expected_audio(e))
    if kind == 'speech':
      np.testing.assert_allclose(ex['timing'], e.meta['timing'], atol=1e-6)
    else:
      assert 'timing' not in ex
  by_status = {e.status for e in rows}
  assert {'label_size', 'truncated_audio', 'bad_image'} <= by_status
  for i, e in enumerate(rows):
    if e.status in BAD_STATUS:
      with pytest.raises(errors.BadExample) as err:
        src.read(i, rng)
      assert err.value.reason in BAD_STATUS[e.status]


def test_ade20k_requires_every_file(tmp_path):
  fixtures.ade20k_prompted(str(tmp_path), 'speech', faults=False, missing=True)
  with pytest.raises(errors.DataError, match=r'unusable.*0 % this split tolerates'):
    _raw('ade20k_speech_prompted', str(tmp_path), 'val')


def test_mixed_routes_half_to_each(root):
  config = load_config('denseav.py', 'twohead,runlocal')
  config.data.raw_dir = root['root']
  src = sources.make(config, 'train')
  assert len(src) == len(src.speech)
  labels = [src.route(i % len(src), np.random.default_rng(i))[2] for i in range(400)]
  assert 0.4 < np.mean(labels) < 0.6
  again = [src.route(i % len(src), np.random.default_rng(i))[2] for i in range(400)]
  assert labels == again


# --------------------------------------------------------------------- index, errors

def test_manifest_makes_the_second_start_skip_the_scan(root, monkeypatch):
  src = _raw('places_audio', root['root'], 'train')
  path = src.summary['manifest']
  assert os.path.isfile(path) and os.path.getsize(path) < 20_000
  monkeypatch.setattr(manifest, 'list_files', lambda *a: pytest.fail('rescanned'))
  again = _raw('places_audio', root['root'], 'train')
  assert [r.id for r in again.rows] == [r.id for r in src.rows]


def test_manifest_is_rebuilt_when_metadata_changes(tmp_path):
  fixtures.places_audio(str(tmp_path), faults=False, num_train=4, num_val=2)
  src = _raw('places_audio', str(tmp_path), 'train')
  meta = os.path.join(str(tmp_path), 'PlacesAudio_400k_distro', 'metadata', 'train.json')
  with open(meta) as f:
    m = json.load(f)
  m['data'] = m['data'][:2]
  time.sleep(0.01)
  with open(meta, 'w') as f:
    json.dump(m, f)
  assert len(_raw('places_audio', str(tmp_path), 'train')) == 2 < len(src)


def test_manifest_is_rebuilt_when_files_are_added(tmp_path, monkeypatch, caplog):
  """A manifest built while files were missing is reused only while the media folders are
  unchanged (every start warns about what it leaves out, in one line); once the download
  completes, the next start indexes again and the examples appear."""
  fx = fixtures.places_audio(str(tmp_path), faults=['missing_audio', 'missing_image'],
                             num_train=6, num_val=2, seconds=(1.0, 1.5))
  caplog.set_level(logging.WARNING, logger='denseav_jax.data')

  def left_out():
    lines = [r.getMessage() for r in caplog.records if 'left out' in r.getMessage()]
    caplog.clear()
    return lines

  before = _raw('places_audio', str(tmp_path), 'train')
  assert len(before) == 6 and before.summary['missing'] == {'audio': 1, 'image': 1}
  first = left_out()
  assert len(first) == 1 and "2 of the 8 listed examples left out (25.0 %" in first[0]
  assert "{'audio': 1, 'image': 1}" in first[0] and '97 % tolerated' in first[0]
  with monkeypatch.context() as m:  # Nothing changed: the manifest is reused, and warns.
    m.setattr(manifest, 'list_files', lambda *a: pytest.fail('rescanned'))
    assert len(_raw('places_audio', str(tmp_path), 'train')) == 6
  assert left_out() == first

  time.sleep(0.05)  # Past the filesystem clock's tick: the folders get new times.
  ok = fx.ok('train')[0]
  gone = [e for e in fx.entries['train'] if e.status in ('missing_audio', 'missing_image')]
  for e in gone:
    role = e.status.split('_')[1]
    os.makedirs(os.path.dirname(e.files[role]), exist_ok=True)
    shutil.copy(ok.files[role], e.files[role])
  after = _raw('places_audio', str(tmp_path), 'train')
  assert len(after) == 8 and after.summary['missing'] == {}
  assert {e.id for e in gone} <= {r.id for r in after.rows}
  assert not left_out()


def test_read_only_data_root_caches_the_manifest_elsewhere(tmp_path, monkeypatch):
  fixtures.places_audio(str(tmp_path / 'd'), faults=False, num_train=3, num_val=2)
  cache = tmp_path / 'cache'
  real_write = io_lib.write_json

  def refuse_beside_data(path, obj):
    if str(tmp_path / 'd') in path:
      raise PermissionError(path)
    real_write(path, obj)
  monkeypatch.setattr(io_lib, 'write_json', refuse_beside_data)
  src = base.RawSource(sources.dataset('places_audio'), str(tmp_path / 'd'), 'train',
                       manifest_dir=str(cache))
  assert src.summary['manifest'].startswith(str(cache))


def test_data_set_folder_itself_is_accepted(root):
  inner = os.path.join(root['root'], 'PlacesAudio_400k_distro')
  assert len(_raw('places_audio', inner, 'val')) == len(_raw('places_audio', root['root'], 'val'))


def test_wrong_root_or_layout_names_the_expected_file(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    _raw('places_audio', str(tmp_path / 'nope'), 'train')
  (tmp_path / 'PlacesAudio_400k_distro').mkdir()
  with pytest.raises(errors.DataError) as e:
    _raw('places_audio', str(tmp_path), 'train')
  msg = str(e.value)
  assert 'PlacesAudio_400k_distro/metadata/train.json' in msg and 'expected' in msg
  with pytest.raises(errors.DataError, match=r'audioset-raw/metadata/unbalanced_train_segments'):
    _raw('audioset', str(tmp_path), 'train')
  # A metadata file of the wrong shape.
  meta = tmp_path / 'PlacesAudio_400k_distro' / 'metadata'
  meta.mkdir()
  (meta / 'train.json').write_text('[1, 2]')
  with pytest.raises(errors.DataError, match='no "data" list'):
    _raw('places_audio', str(tmp_path), 'train')
  with pytest.raises(errors.DataError, match="no split 'test'"):
    _raw('places_audio', str(tmp_path), 'test')


def test_too_many_missing_files_is_one_error(tmp_path):
  """Training's reader names the override as train takes it (--config.data.KEY)."""
  fixtures.audioset(str(tmp_path), num_train=3, num_val=2, seconds=(1.0, 1.2),
                    faults=['missing_audio', 'missing_audio'])
  config = load_config('denseav.py', 'sound')
  config.data.raw_dir = str(tmp_path)
  with pytest.raises(errors.DataError, match=r'2 of the 5 listed.*17 %.*raise '
                     r'--config\.data\.max_missing_fraction \(e\.g\. '
                     r'--config\.data\.max_missing_fraction=0\.41\)'):
    sources.make(config, 'train')
  config.data.max_missing_fraction = 0.5
  assert len(sources.make(config, 'train')) == 3


@pytest.mark.subprocess
def test_prepare_names_its_own_flag_for_missing_files(tmp_path):
  """A download missing more files than the release tolerates (a real AudioSet misses ~15 %
  of its clips): prepare refuses in one line naming its --max_missing_fraction, and
  prepares with it, warning in one line what it leaves out."""
  raw, out = str(tmp_path / 'raw'), str(tmp_path / 'out')
  fixtures.audioset(raw, num_train=3, num_val=2, seconds=(1.0, 1.2),
                    faults=['missing_audio', 'missing_audio'])
  cmd = [sys.executable, '-m', 'denseav_jax.prepare', '--dataset', 'audioset', '--raw_dir',
         raw, '--out_dir', out, '--splits', 'train', '--workers', '1']
  run = lambda *extra: subprocess.run([*cmd, *extra], cwd=ROOT, env=subprocess_env(),
                                      capture_output=True, text=True, timeout=300)
  r = run()
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert '2 of the 5 listed' in lines[0] and 'raise --max_missing_fraction' in lines[0]
  assert 'config.data' not in lines[0]
  r = run('--max_missing_fraction', '0.5')
  assert r.returncode == 0, r.stderr[-2000:]
  warned = [l for l in r.stderr.splitlines() if 'left out' in l]
  assert len(warned) == 1 and '2 of the 5 listed examples left out' in warned[0], r.stderr
  assert len(base.PreparedSource(sources.dataset('audioset'), out, 'train')) == 3


def test_audioset_csv_both_formats(root):
  header, rows = base.read_csv(os.path.join(root['root'], 'audioset-raw', 'metadata',
                                            'unbalanced_train_segments.csv'))
  assert header == ['YTID', 'start_seconds', 'end_seconds', 'positive_labels']
  assert all(len(r) == 4 for r in rows) and all(',' in r[3] or r[3] for r in rows)
  header, rows = base.read_csv(os.path.join(root['root'], 'audioset-eval', 'metadata',
                                            'eval_segments_subset.csv'))
  assert header == ['YTID', 'start_seconds', 'end_seconds', 'positive_labels']


# --------------------------------------------------------------------------- prepare

def _records_equal(a, b):
  assert set(a) == set(b), (set(a) ^ set(b))
  for k in a:
    x, y = a[k], b[k]
    if isinstance(x, (bytes, str)):
      assert x == y, k
    elif isinstance(x, list) and x and isinstance(x[0], bytes):
      assert x == list(y), k
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=k)


@pytest.mark.parametrize('name,kw', [('places_audio', dict(captions=True)), ('audioset', {}),
                                     ('ade20k_speech_prompted', {}),
                                     ('ade20k_sound_prompted', {})])
def test_prepare_then_read_equals_raw(root, tmp_path, name, kw):
  out = str(tmp_path / 'prepared')
  logs = []
  # A process pool for one data set (spawned: JAX is loaded here), in-process for the rest.
  summary = prepare.prepare(name, root['root'], out, examples_per_shard=3,
                            workers=2 if name == 'places_audio' else 1,
                            log=logs.append)
  ds = sources.dataset(name, **kw)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for split in ds.splits:
    raw = base.RawSource(sources.dataset(name, **kw), root['root'], split)
    kept = summary['splits'][split]
    prepared = base.PreparedSource(ds, out, split)
    assert len(prepared) == kept['kept'] and kept['kept'] + kept['skipped'] == len(raw)
    fx = root[{'places_audio': 'places', 'audioset': 'audioset', 'ade20k_speech_prompted':
               'speech', 'ade20k_sound_prompted': 'sound'}[name]]
    planted = [e for e in fx.entries[split] if e.status in set(BAD_STATUS) | {'short_audio'}]
    assert kept['skipped'] == len(kept['skipped_files']) == len(planted)
    named = ' '.join(f['file'] for f in kept['skipped_files'])
    for e in planted:  # The summary names a file of every skipped example.
      assert any(os.path.basename(f) in named for f in e.files.values()), (e.status, named)
    # Every kept row, in order, with every field equal to reading the raw layout; and
    # decoded examples equal for the same generator.
    good = [i for i in range(len(raw))
            if isinstance(prepare.checked_record(raw, i, prepare.DEFAULT_CLIP_SAMPLES, 0.04),
                          dict)]
    assert len(good) == len(prepared)
    data_source = tfds.data_source(name, split=split, data_dir=out)  # Plain TFDS.
    for j, i in enumerate(good):
      _records_equal(raw.record(i), prepared.record(j))
      _records_equal(raw.record(i), base.from_stored(data_source[j]))
      a, b = raw.read(i, np.random.default_rng(j)), prepared.read(j, np.random.default_rng(j))
      np.testing.assert_array_equal(np.asarray(a['image']), np.asarray(b['image']))
      np.testing.assert_array_equal(a['audio'], b['audio'])
  with open(summary['summary_file']) as f:
    written = json.load(f)
  assert written['splits'].keys() == summary['splits'].keys()
  assert any('ETA' in line for line in logs) and 'skipped' in logs[-1]


def test_tfds_builder_builds_the_same_records(root, tmp_path):
  """The data set's TFDS builder, run the standard way (download_and_prepare with the raw
  folder as manual_dir), writes the records our resumable writer writes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  b = prepare.builder('places_audio', str(tmp_path / 'tfds'))
  assert 'PlacesAudio_400k_distro/' in b.MANUAL_DOWNLOAD_INSTRUCTIONS
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root['root']))
  ours = str(tmp_path / 'ours')
  prepare.prepare('places_audio', root['root'], ours, splits=['val'], workers=1,
                  log=lambda *a: None)
  theirs = tfds.builder_from_directory(str(b.data_path)).as_data_source('val')
  mine = base.PreparedSource(sources.dataset('places_audio'), ours, 'val')
  assert len(theirs) == len(mine)
  for j in range(len(mine)):
    _records_equal(base.from_stored(theirs[j]), mine.record(j))


_KILL_AFTER = r'''
import os, signal, sys, time
from denseav_jax.data import prepare
write_shard = prepare._write_shard
def slow_write_shard(task):  # 0.3 s a shard: the workers cannot finish them all while
  time.sleep(0.3)            # this process waits for a share of a busy CPU to kill them.
  return write_shard(task)
prepare._write_shard = slow_write_shard  # The forked workers run it.
seen = []
def log(line):
  print(line, flush=True)
  if 'examples (' in line:
    seen.append(line)
    if len(seen) == 3:
      os.killpg(os.getpgrp(), signal.SIGKILL)  # The whole run, workers included.
prepare.prepare('places_audio', sys.argv[1], sys.argv[2], examples_per_shard=1, workers=2,
                log=log, progress_every=0)
'''


@pytest.mark.subprocess
def test_prepare_killed_midway_resumes_without_redoing_shards(tmp_path):
  data = str(tmp_path / 'd')
  fixtures.places_audio(data, num_train=16, num_val=3, faults=['bad_audio'])
  out = str(tmp_path / 'out')
  r = subprocess.run([sys.executable, '-c', _KILL_AFTER, data, out], env=subprocess_env(),
                     start_new_session=True, capture_output=True, text=True, timeout=300)
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  version = os.path.join(out, 'places_audio', '1.0.0')
  state = os.path.join(version, '.prepare')
  done_before = {n: os.path.getmtime(os.path.join(state, n)) for n in os.listdir(state)
                 if n.endswith('.json') and n != 'plan.json' and '.tmp' not in n}
  assert 3 <= len(done_before) < 16 + 3
  # Nothing half-written is readable: no metadata until the run completes.
  assert not os.path.exists(os.path.join(version, 'dataset_info.json'))
  with pytest.raises(errors.DataError, match='unfinished'):
    base.PreparedSource(sources.dataset('places_audio'), out, 'train')
  logs = []
  prepare.prepare('places_audio', data, out, examples_per_shard=1, workers=1, log=logs.append)
  assert f'{len(done_before)} shard(s) already done' in logs[0]
  for n, t in done_before.items():  # Finished shards were not redone.
    assert os.path.getmtime(os.path.join(state, n)) == t
  assert not [n for n in os.listdir(version) if '.tmp' in n]
  resumed = base.PreparedSource(sources.dataset('places_audio'), out, 'train')
  clean = str(tmp_path / 'clean')
  prepare.prepare('places_audio', data, clean, examples_per_shard=1, workers=1,
                  log=lambda *a: None)
  fresh = base.PreparedSource(sources.dataset('places_audio'), clean, 'train')
  assert len(resumed) == len(fresh) == 16
  for j in range(len(fresh)):
    _records_equal(resumed.record(j), fresh.record(j))
  with pytest.raises(errors.DataError, match='other settings'):
    prepare.prepare('places_audio', data, out, examples_per_shard=4, workers=1,
                    log=lambda *a: None)


@pytest.mark.subprocess
def test_prepare_cli(root, tmp_path):
  out = str(tmp_path / 'cli')
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.prepare', '--dataset',
                      'ade20k_sound_prompted', '--raw_dir', root['root'], '--out_dir', out],
                     cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'kept' in r.stdout and 'ETA' in r.stdout
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.prepare', '--dataset',
                      'places_audio', '--raw_dir', str(tmp_path / 'nothing'), '--out_dir', out],
                     cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and r.stderr.strip().startswith('error:')
  assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = subprocess.run([sys.executable, '-m', 'denseav_jax.prepare', '--help'], cwd=ROOT,
                     env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and '--examples_per_shard' in r.stdout


def test_prepare_split_by_split_then_again(root, tmp_path):
  """Splits prepared by separate runs end up in one data set; a run on a finished folder
  redoes nothing and leaves it readable."""
  out = str(tmp_path / 'p')
  quiet = lambda *a: None
  prepare.prepare('places_audio', root['root'], out, splits=['val'], workers=1, log=quiet)
  prepare.prepare('places_audio', root['root'], out, splits=['train'], workers=1, log=quiet)
  ds = sources.dataset('places_audio')
  sizes = {s: len(base.PreparedSource(ds, out, s)) for s in ('train', 'val')}
  logs = []
  prepare.prepare('places_audio', root['root'], out, workers=1, log=logs.append)
  assert 'already done' in logs[0] and len(logs) == 2  # No progress: nothing to write.
  assert {s: len(base.PreparedSource(ds, out, s)) for s in ('train', 'val')} == sizes
  assert sizes == {s: len(root['places'].ok(s)) for s in ('train', 'val')}
