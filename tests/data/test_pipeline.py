"""The Grain training stream and the evaluation sets (denseav_jax/data/pipeline.py) on
fixture copies of the real layouts: determinism, per-host shards, save / restore, bad
input, the training transforms in the stream, the mixed stream and the evaluation sets."""

import collections
import json
import logging
import os
import threading

import grain
import numpy as np
import pytest
from PIL import Image

from conftest import load_config
from denseav_jax import errors
from denseav_jax.data import examples
from denseav_jax.testing import fixtures
from denseav_jax.data import pipeline
from denseav_jax.data import prepare
from denseav_jax.data import sources
from denseav_jax.data import transforms
from denseav_jax.data.sources import base

S, L = 32, 32_000  # configs/denseav.py runlocal: input.image_size, input.audio_samples.
TRAIN_KEYS = ('image', 'audio', 'audio_len', 'source', 'audio_start', 'pos_mask', 'image_mask')
MISSING = ('missing_audio', 'missing_image')  # Left out at index time.
_READ = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)  # Grain's default: 16, 500.


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
  """One root with a faultless Places Audio (16 train), AudioSet and ADE20K Speech-Prompted."""
  root = str(tmp_path_factory.mktemp('clean'))
  places = fixtures.places_audio(root, num_train=16, num_val=4, faults=False, seconds=(1.0, 4.0))
  audioset = fixtures.audioset(root, num_train=8, num_val=2, faults=False, seconds=(1.0, 2.0))
  ade = fixtures.ade20k_prompted(root, 'speech', num=8, faults=False)
  return dict(root=root, places=places, audioset=audioset, ade=ade)


@pytest.fixture(scope='module')
def prepared(clean, tmp_path_factory):
  """The faultless Places Audio prepared (runs in the first test, before any reader threads
  or JAX backend exist, since preparation forks a worker process)."""
  out = str(tmp_path_factory.mktemp('prepared'))
  summary = prepare.prepare('places_audio', clean['root'], out, examples_per_shard=8, workers=1,
                            log=lambda *a: None)
  assert summary['splits']['train']['kept'] == 16
  assert summary['splits']['train']['skipped'] == 0
  return out


@pytest.fixture(scope='module')
def faulty(tmp_path_factory):
  """Places Audio with the generator's default faults (one of each kind, train and val)."""
  root = str(tmp_path_factory.mktemp('faulty'))
  return fixtures.places_audio(root, seconds=(1.0, 4.0))


def _config(arg='runlocal', **data):
  c = load_config('denseav.py', arg)
  c.data.update(data)
  return c


def _plain(c):
  """No training transforms: batch audio = the clip fitted to L, image = eval transform."""
  c.data.update(image_aug=False, quad_mixup=0.0, bg_mixup=0.0, patch_mixup=0.0,
                neg_audio=False, extra_audio_masking=False)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert tuple(x) == tuple(y)
    for k in x:
      assert x[k].dtype == y[k].dtype, k
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _fit(x):
  return transforms.fit_length(np.asarray(x, np.float32), L)[0]


def _match(row_audio, table):
  """The index of the one table row equal to row_audio (asserts there is exactly one)."""
  hits = [i for i, a in enumerate(table) if np.array_equal(a, row_audio)]
  assert len(hits) == 1, hits
  return hits[0]


# ---------------------------------------------------------------- 1. determinism


def test_identical_seeds_identical_streams_and_raw_equals_prepared(clean, prepared):
  raw = _config(raw_dir=clean['root'])
  prep = _config(raw_dir='', prepared_dir=prepared)

  # The two readers give identical examples.
  rs, ps = sources.make(raw, 'train'), sources.make(prep, 'train')
  assert isinstance(rs, base.RawSource) and isinstance(ps, base.PreparedSource)
  assert len(rs) == len(ps) == 16
  for i in range(16):
    a, b = rs.read(i, np.random.default_rng(i)), ps.read(i, np.random.default_rng(i))
    assert a['id'] == b['id']
    np.testing.assert_array_equal(np.asarray(a['image']), np.asarray(b['image']))
    np.testing.assert_array_equal(a['audio'], b['audio'])
    np.testing.assert_array_equal(rs.audio(i), ps.audio(i))

  first = _take(pipeline.train_iterator(raw), 4)
  assert tuple(first[0]) == TRAIN_KEYS
  _assert_same_batches(first, _take(pipeline.train_iterator(raw), 4))
  _assert_same_batches(first[:3], _take(pipeline.train_iterator(prep), 3))

  other = _take(pipeline.train_iterator(_seeded(clean['root'], 1)), 2)
  for x, y in zip(first, other):
    assert not np.array_equal(x['image'], y['image'])
    assert not np.array_equal(x['audio'], y['audio'])


def _seeded(root, seed):
  c = _config(raw_dir=root)
  c.seed = seed
  return c


# -------------------------------------------------------------- 2. per-host shards


@pytest.mark.parametrize('hosts', [1, 2, 4])
def test_hosts_read_disjoint_slices_of_the_global_batch(clean, hosts):
  c = _config(raw_dir=clean['root'])
  single = pipeline.train_dataset(c, process_index=0, process_count=1)
  shards = [pipeline.train_dataset(c, process_index=p, process_count=hosts)
            for p in range(hosts)]
  for g in (0, 1, 5):
    whole = single[g]
    local = [shards[p][g] for p in range(hosts)]
    for k in whole:
      for part in local:
        assert len(part[k]) == 8 // hosts
      np.testing.assert_array_equal(np.concatenate([part[k] for part in local]), whole[k],
                                    err_msg=f'{k} of global batch {g}')
    rows = whole['audio'].reshape(8, -1)
    assert len({r.tobytes() for r in rows}) == 8  # Distinct examples: the slices are disjoint.


def test_hosts_agree_on_replacements_of_bad_examples(faulty):
  c = _faulty_config(faulty, max_bad_fraction=0.9)
  single = pipeline.train_dataset(c, process_index=0, process_count=1)
  halves = [pipeline.train_dataset(c, process_index=p, process_count=2) for p in range(2)]
  skipped = 0
  for g in range(3):
    whole = single[g]
    skipped += int(whole[pipeline.BAD_KEY].sum())
    for k in whole:
      np.testing.assert_array_equal(np.concatenate([h[g][k] for h in halves]), whole[k])
  assert skipped > 0


@pytest.mark.parametrize('hosts', [1, 2])
def test_one_epoch_reads_every_example_once(clean, hosts):
  c = _plain(_config(raw_dir=clean['root']))
  src = sources.make(c, 'train')
  n = len(src)
  assert n == 16 and c.batch_size == 8
  table = [_fit(src.read(i, np.random.default_rng(0))['audio']) for i in range(n)]
  order = pipeline.TrainExamples(src, examples.Spec.from_config(c), c.seed)
  local = 8 // hosts
  read = {}  # Global stream position -> source index identified from the batch's audio.
  for p in range(hosts):
    ds = pipeline.train_dataset(c, process_index=p, process_count=hosts)
    for k in range(4):  # Local batch k is a slice of global batch k: 4 = two epochs.
      batch = ds[k]
      assert not batch[pipeline.BAD_KEY].any()
      for j in range(local):
        read[k * 8 + p * local + j] = _match(batch['audio'][j], table)
  assert sorted(read) == list(range(2 * n))
  epoch1 = [read[g] for g in range(n)]
  epoch2 = [read[g] for g in range(n, 2 * n)]
  assert sorted(epoch1) == list(range(n)) and sorted(epoch2) == list(range(n))
  assert epoch1 != epoch2
  assert [order.index(g) for g in range(2 * n)] == epoch1 + epoch2


# --------------------------------------------------------------- 3. save / restore


def test_iterator_state_restores_mid_epoch(clean):
  c = _config(raw_dir=clean['root'])
  it = pipeline.train_iterator(c)
  _take(it, 3)
  state = it.state()
  assert json.loads(json.dumps(state)) == state  # Plain JSON.
  assert state['position'] == 3 * c.batch_size
  after = _take(it, 2)
  it.close()

  fresh = pipeline.train_iterator(c, state=state)
  assert fresh.examples == 24 and not fresh.bad.any()
  _assert_same_batches(_take(fresh, 2), after)
  assert fresh.position == 5 * c.batch_size
  fresh.close()

  # The state is global: two processes restoring it read the two halves of batch 3.
  halves = [_take(pipeline.train_iterator(c, state=state, process_index=p, process_count=2),
                  1)[0] for p in range(2)]
  for k in after[0]:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), after[0][k])


@pytest.mark.parametrize('hosts', [1, 2])
def test_changed_batch_size_resumes_at_the_next_example(clean, hosts):
  """3 batches of 8, then a resume with batch 6 (on one or two processes): the examples
  read are exactly stream positions 24-47, across the epoch boundary at 32, none skipped or
  repeated (the saved position counts examples, not batches)."""
  c = _config(raw_dir=clean['root'])
  assert c.batch_size == 8
  it = pipeline.train_iterator(c)
  seen = _take(it, 3)
  state = it.state()
  it.close()
  assert state['position'] == 24
  ref = pipeline.train_dataset(c, process_index=0, process_count=1)
  straight = {k: np.concatenate([ref[g][k] for g in range(6)]) for k in TRAIN_KEYS}
  c6 = _config(raw_dir=clean['root'])
  c6.batch_size = 6
  parts = [pipeline.train_iterator(c6, state=state, process_index=p, process_count=hosts)
           for p in range(hosts)]
  local = [_take(s, 4) for s in parts]  # 4 global batches of 6: positions 24 .. 47.
  for k in TRAIN_KEYS:
    np.testing.assert_array_equal(np.concatenate([b[k] for b in seen]), straight[k][:24])
    resumed = np.concatenate([part[j][k] for j in range(4) for part in local])
    np.testing.assert_array_equal(resumed, straight[k][24:], err_msg=k)
  assert [s.position for s in parts] == [48] * hosts
  for s in parts:
    s.close()


def test_saved_state_without_a_position_is_one_error(clean):
  c = _config(raw_dir=clean['root'])
  with pytest.raises(errors.DataError, match='no example position'):
    pipeline.train_iterator(c, state={'next_batch': 3, 'bad': [0] * 7, 'examples': 24})


# ------------------------------------------------------------------- 4. bad input


def _faulty_config(faulty, **kw):
  # min_audio_fraction 0.2 (6,400 of 32,000 samples): the 0.25 s clip counts as short
  # (4,000 samples), every OK clip (>= 1 s) does not, even after extra masking (>= 0.5 s).
  return _config(raw_dir=faulty.root, min_audio_fraction=0.2, **kw)


def _bad_rows(fx, split):
  return {e.status: e for e in fx.entries[split] if e.status not in ('ok',) + MISSING}


def test_bad_files_are_skipped_counted_and_logged(faulty, caplog):
  c = _faulty_config(faulty, max_bad_fraction=0.9)
  src = sources.make(c, 'train')
  listed = len(faulty.entries['train'])
  assert src.summary['listed'] == listed
  assert src.summary['usable'] == len(src) == listed - 2
  assert src.summary['missing'] == {'audio': 1, 'image': 1}

  # Read the batches in this thread (no prefetch), so the warnings are exactly the skips.
  caplog.set_level(logging.WARNING, logger='denseav_jax.data')
  ds = pipeline.train_dataset(c)
  batches = [ds[k] for k in range(6)]
  counted = sum(b[pipeline.BAD_KEY].sum(0) for b in batches)
  skips = [r.getMessage() for r in caplog.records if 'skipping an unusable example' in
           r.getMessage()]
  assert len(skips) == counted.sum() > 0
  by_reason = collections.Counter(m.split(': ')[1].split(':')[0].split(' ')[-1] for m in skips)
  assert by_reason == {r: int(n) for r, n in zip(errors.REASONS, counted) if n}
  bad = _bad_rows(faulty, 'train')
  expect = {('truncated', bad['truncated_audio'].files['audio']),
            ('empty', bad['empty_audio'].files['audio']),
            ('undecodable', bad['bad_audio'].files['audio']),
            ('undecodable', bad['bad_image'].files['image']),
            ('short_audio', bad['short_audio'].id)}
  for reason, name in expect:
    assert any(f'{reason}: ' in m and name in m for m in skips), (reason, name)
  for r in ('missing', 'label_size', 'bad_row'):
    assert counted[errors.REASONS.index(r)] == 0

  # The threaded iterator: full batches, the same counts, stats and summary.
  it = pipeline.train_iterator(c)
  for b, ref in zip(_take(it, 6), batches):
    assert tuple(b) == TRAIN_KEYS
    for k in TRAIN_KEYS:
      assert len(b[k]) == c.batch_size
      np.testing.assert_array_equal(b[k], ref[k])
  np.testing.assert_array_equal(it.bad, counted)
  assert it.examples == 48
  n = int(counted.sum())
  stats = it.stats()
  assert stats['data/bad_examples'] == n
  assert stats['data/bad_fraction'] == pytest.approx(n / (48 + n))
  for r, k in zip(errors.REASONS, counted):
    assert stats[f'data/bad_{r}'] == k
  summary = it.summary()
  assert f'{n} unusable examples skipped' in summary and f'of {48 + n} read' in summary
  for r, k in zip(errors.REASONS, counted):
    if k:
      assert f"'{r}': {k}" in summary

  # The counts travel with the iterator state.
  again = pipeline.train_iterator(c, state=it.state())
  np.testing.assert_array_equal(again.bad, it.bad)
  assert again.summary() == summary
  it.close()
  again.close()


def test_too_many_bad_examples_stop_with_one_data_error(faulty):
  c = _faulty_config(faulty, max_bad_fraction=0.01)
  keys = pipeline.train_keys(c)
  stream = pipeline.TrainStream(iter(pipeline.train_dataset(c).to_iter_dataset(_READ)), keys,
                                c.data.max_bad_fraction, min_examples=8)
  with pytest.raises(errors.DataError,
                     match=r'more than --config\.data\.max_bad_fraction=0\.01') as e:
    next(stream)
  assert stream.summary() in str(e.value)  # The counts, in the same one message.
  assert stream.examples == 8  # Raised on the first batch: 8 >= min_examples were tried.
  stream.close()

  # The real iterator waits for its min_examples (200 by default) before judging.
  it = pipeline.train_iterator(c)
  limit = it.min_examples
  assert limit == c.data.get('bad_fraction_after', 200) == 200
  tried = 0
  for _ in range(40):
    before = tried
    try:
      next(it)
    except errors.DataError as err:
      assert 'data.max_bad_fraction=0.01' in str(err)
      break
    tried = it.examples + int(it.bad.sum())
    assert tried < limit
  else:
    pytest.fail('no DataError within 40 batches')
  assert before < limit <= it.examples + int(it.bad.sum())
  it.close()


def _two_process_fractions(c, batches=4):
  """What two processes' streams read of `c` (simulated in this process): their own bad
  fractions and the one of their summed counts."""
  streams = [pipeline.train_iterator(c, process_index=p, process_count=2) for p in range(2)]
  for s in streams:
    _take(s, batches)  # Several processes: no stream stops on its own counts.
    s.close()
  total = (sum(s.bad for s in streams), sum(s.examples for s in streams))
  return streams, total


def _decision(check) -> str | None:
  try:
    check()
    return None
  except errors.DataError as e:
    return str(e)


def test_bad_fraction_stop_is_decided_on_the_summed_counts(faulty):
  """On several processes the stop is judged on the counts summed over them (what the
  training loop gathers at its log and save steps): every process takes the same decision
  with the same message, where their own counts would disagree."""
  streams, total = _two_process_fractions(_faulty_config(faulty, bad_fraction_after=8))
  assert not any(s.check_every_batch for s in streams)
  own = sorted(s.fraction() for s in streams)
  agreed = streams[0].fraction(total)
  assert own[0] < agreed < own[1], (own, agreed)
  for threshold, stops in (((own[0] + agreed) / 2, True), ((agreed + own[1]) / 2, False)):
    alone, together = [], []
    for s in streams:
      s.max_bad_fraction = threshold
      alone.append(_decision(s.check) is not None)
      together.append(_decision(lambda s=s: s.check(total)))
    assert sorted(alone) == [False, True]  # Per-process: one would stop, one would wait.
    assert together[0] == together[1] and (together[0] is not None) == stops
  assert streams[0].stats(total) == streams[1].stats(total)


_TWO_PROCESSES = r'''
import json, sys
import jax
pid, port, root, thresholds = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=2,
                           process_id=pid)
from denseav_jax import configs, errors
from denseav_jax.data import pipeline
c = configs.load('configs/denseav.py:runlocal')
c.data.update(raw_dir=root, min_audio_fraction=0.2, bad_fraction_after=8)
s = pipeline.train_iterator(c)
for _ in range(4):
  next(s)
counts = s.global_counts()
out = dict(own=s.fraction(), agreed=s.fraction(counts), decisions=[])
for t in thresholds:
  s.max_bad_fraction = t
  try:
    s.check(counts)
    out['decisions'].append(None)
  except errors.DataError as e:
    out['decisions'].append(str(e))
s.close()
print('RESULT', json.dumps(out), flush=True)
'''


@pytest.mark.subprocess
@pytest.mark.multiprocess
def test_two_processes_agree_on_the_bad_fraction_stop(faulty):
  """Two jax.distributed processes (one CPU device each) reading the faulty layout: their
  gathered counts give both the same decision, at a threshold between their own fractions
  (each would decide differently alone)."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT, subprocess_env  # pylint: disable=g-import-not-at-top
  c = _faulty_config(faulty, bad_fraction_after=8)
  streams, total = _two_process_fractions(c)
  own = [s.fraction() for s in streams]
  agreed = streams[0].fraction(total)
  thresholds = [(min(own) + agreed) / 2, (agreed + max(own)) / 2]
  with socket.socket() as sock:
    sock.bind(('localhost', 0))
    port = sock.getsockname()[1]
  env = subprocess_env(devices=1, cache=False)
  procs = [subprocess.Popen(
      [sys.executable, '-c', _TWO_PROCESSES, str(p), str(port), faulty.root,
       json.dumps(thresholds)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True) for p in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  results = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    results.append(json.loads(out.split('RESULT ', 1)[1]))
  assert [r['own'] for r in results] == pytest.approx(own)
  assert results[0]['agreed'] == results[1]['agreed'] == pytest.approx(agreed)
  assert results[0]['decisions'] == results[1]['decisions']
  stop, go = results[0]['decisions']
  assert stop and 'more than --config.data.max_bad_fraction' in stop and go is None


class _AlwaysBad:
  """A source whose every example is unusable."""

  def __len__(self):
    return 3

  def read(self, index, rng):
    raise errors.BadExample('undecodable', f'/nowhere/{index}.wav', 'test')

  def audio(self, index):
    raise errors.BadExample('undecodable', f'/nowhere/{index}.wav', 'test')


def test_all_bad_source_raises_instead_of_hanging():
  c = load_config()
  c.input.update(image_size=S, audio_samples=L)
  spec = examples.Spec.from_config(c)
  make = pipeline.TrainExamples(_AlwaysBad(), spec, seed=0, max_attempts=5)
  with pytest.raises(errors.DataError, match=r'5 examples in a row were unusable'):
    make(0)

  ds = grain.MapDataset.range(64).map(make).batch(4)
  stream = pipeline.TrainStream(iter(ds.to_iter_dataset(_READ)),
                                spec.train_keys(), 0.9)
  got = []

  def pull():
    try:
      next(stream)
    except Exception as e:  # pylint: disable=broad-except
      got.append(e)

  t = threading.Thread(target=pull, daemon=True)
  t.start()
  t.join(30)
  assert not t.is_alive(), 'the stream hung on a source without one usable example'
  assert len(got) == 1 and isinstance(got[0], errors.DataError)
  assert 'in a row' in str(got[0])


# --------------------------------------------------------- 5. transforms in the stream


def _quadrant_union(mask):
  """True if a uint8 [S, S] mask is constant 0/1 on each quadrant, with >= one quadrant 1."""
  h = S // 2
  quads = [mask[r:r + h, c:c + h] for r in (0, h) for c in (0, h)]
  if not all(np.all(q == q.flat[0]) for q in quads):
    return False
  return {int(q.flat[0]) for q in quads} <= {0, 1} and any(q.flat[0] == 1 for q in quads)


def test_transforms_in_the_stream(clean):
  c = _config(raw_dir=clean['root'])
  assert c.data.image_aug and c.data.quad_mixup == 0.1 and c.data.neg_audio
  assert c.data.extra_audio_masking and c.input.image_size == S and c.input.audio_samples == L
  batches = _take(pipeline.train_iterator(c), 2)
  dtypes = dict(image=np.uint8, audio=np.float32, audio_len=np.int32, source=np.int32,
                audio_start=np.int32, pos_mask=np.float32, image_mask=np.uint8)
  shapes = dict(image=(8, S, S, 3), audio=(8, L), audio_len=(8,), source=(8,),
                audio_start=(8,), pos_mask=(8, L), image_mask=(8, S, S))
  spliced = masked = 0
  for b in batches:
    assert tuple(b) == TRAIN_KEYS
    for k in TRAIN_KEYS:
      assert b[k].shape == shapes[k] and b[k].dtype == dtypes[k], k
    assert not b['source'].any()
    start, end = b['audio_start'], b['audio_len']
    assert np.all(0 <= start) and np.all(start <= end) and np.all(end <= L)
    assert np.all(end - start >= c.data.min_audio_fraction * L)
    for i in range(8):
      a = b['audio'][i]
      assert not a[:start[i]].any() and not a[end[i]:].any()
      assert np.abs(a[start[i]:end[i]]).max() > 0.01
      p = b['pos_mask'][i]
      assert 0.0 <= p.min() and p.max() <= 1.0
      spliced += bool(np.any(p[:end[i]] < 1.0))
      masked += bool(start[i] > 0)
      m = b['image_mask'][i]
      assert np.all(m == 1) or _quadrant_union(m)
  assert spliced > 0 and masked > 0


@pytest.mark.parametrize('kind', ['quad', 'bg', 'patch'])
def test_forced_mixup_masks(clean, kind):
  c = _config(raw_dir=clean['root'], **{'quad_mixup': 0.0, f'{kind}_mixup': 1.0})
  masks = np.concatenate([b['image_mask'] for b in _take(pipeline.train_iterator(c), 2)])
  assert masks.shape == (16, S, S) and masks.dtype == np.uint8
  assert set(np.unique(masks)) <= {0, 1}
  h = S // 2
  if kind == 'quad':
    assert all(_quadrant_union(m) for m in masks)
    assert any(not m.all() for m in masks)
  elif kind == 'bg':
    sides = set()
    for m in masks:
      ones = int(m.sum())
      assert ones in (h * h, S * S - h * h)
      fg = m if ones == h * h else 1 - m  # The pasted half-size square.
      rows, cols = np.nonzero(fg)
      top, left = rows.min(), cols.min()
      assert 0 <= top < h and 0 <= left < h
      assert fg[top:top + h, left:left + h].all()
      sides.add(ones == h * h)
    assert sides == {True, False}  # Both the true image pasted and pasted upon.
  else:
    p = c.data.patch_size
    for m in masks:
      blocks = m.reshape(S // p, p, S // p, p)
      assert np.all(blocks == blocks[:, :1, :, :1])
      assert 0 < m.sum() < S * S


# ------------------------------------------------------------------ 6. mixed stream


def test_mixed_stream(clean):
  c = _config('twohead,runlocal', raw_dir=clean['root'])
  assert c.data.name == 'mixed'
  a = _take(pipeline.train_iterator(c), 8)
  _assert_same_batches(a, _take(pipeline.train_iterator(c), 8))
  labels = np.concatenate([b['source'] for b in a])
  assert labels.shape == (64,) and set(np.unique(labels)) == {0, 1}
  assert 16 <= int(labels.sum()) <= 48

  # Without transforms each example is exactly a Places (0) or an AudioSet (1) example.
  c = _plain(c)
  src = sources.make(c, 'train')
  speech, sound = src.speech, src.sound
  order = pipeline.TrainExamples(src, examples.Spec.from_config(c), c.seed)
  speech_audio = [_fit(speech.audio(i)) for i in range(len(speech))]
  sound_audio = [_fit(sound.audio(i)) for i in range(len(sound))]
  entries = clean['audioset'].entries['train']
  assert [e.id for e in entries] == [r.id for r in sound.rows]
  seen = set()
  ds = pipeline.train_dataset(c)
  for k in range(2):
    b = ds[k]
    for j in range(8):
      g = 8 * k + j
      if b['source'][j] == 0:
        i = _match(b['audio'][j], speech_audio)
        assert i == order.index(g)
        img = speech.read(i, np.random.default_rng(0))['image']
        np.testing.assert_array_equal(b['image'][j], transforms.eval_image(img, S))
      else:
        i = _match(b['audio'][j], sound_audio)
        frames = [transforms.eval_image(Image.fromarray(f), S) for f in entries[i].frames]
        assert any(np.array_equal(b['image'][j], f) for f in frames)
      seen.add(int(b['source'][j]))
  assert seen == {0, 1}


# ------------------------------------------------------------------ 7. evaluation sets


@pytest.mark.parametrize('n,k', [(100, 10), (2000, 1000), (1000, 1000), (5, 10), (10, 10)])
def test_retrieval_subset_is_the_releases(n, k):
  saved = np.random.get_state()
  try:
    np.random.seed(0)
    release = np.random.permutation(n)[:k]
  finally:
    np.random.set_state(saved)
  got = pipeline.retrieval_subset(n, k)
  np.testing.assert_array_equal(got, release if n > k else np.arange(n))


def test_retrieval_eval_set_drops_bad_examples(faulty, caplog):
  from denseav_jax.evals import sets  # pylint: disable=g-import-not-at-top
  c = _config(raw_dir=faulty.root, max_bad_fraction=0.9)
  assert c.evals.retrieval_places.dataset == 'places_audio:val'
  rows = [e for e in faulty.entries['val'] if e.status not in MISSING]
  assert len(sources.make(c, 'val')) == len(rows) == 10
  # The 0.25 s clip is 4,000 samples, above 0.04 of L: it stays; the file faults go.
  good = [i for i, e in enumerate(rows) if e.status in ('ok', 'short_audio')]
  caplog.set_level(logging.WARNING, logger='denseav_jax')
  ev = sets.EvalSet(c, 'places_audio:val', 10, pairs=True)
  np.testing.assert_array_equal(ev.indices, np.arange(10))
  got = [ev.read(p) for p in range(len(ev))]
  assert [i for i, g in enumerate(got) if g is not None] == good
  for i in good:
    e, g = rows[i], got[i]
    assert g['image'].shape == (S, S, 3) and g['image'].dtype == np.uint8
    assert g['audio'].shape == (L,) and g['audio'].dtype == np.float32
    np.testing.assert_array_equal(g['image'], transforms.eval_image(Image.fromarray(e.image), S))
    if e.sample_rate == 16000:
      truth = e.audio[:, 0]
      assert g['audio_len'] == min(len(truth), L)
      np.testing.assert_array_equal(g['audio'], _fit(truth))
  dropped = [m for m in (r.getMessage() for r in caplog.records) if 'leaving out' in m]
  assert len(dropped) == len(rows) - len(good)
  for e in (rows[i] for i in range(len(rows)) if i not in good):
    path = e.files['image'] if e.status == 'bad_image' else e.files['audio']
    assert any(path in m for m in dropped), e.status

  # A smaller set is the release's subset of it, in its order.
  sub = sets.EvalSet(c, 'places_audio:val', 5, pairs=True)
  np.testing.assert_array_equal(sub.indices, pipeline.retrieval_subset(10, 5))


def test_speech_prompted_eval_set(clean):
  from denseav_jax.evals import sets  # pylint: disable=g-import-not-at-top
  c = _config(raw_dir=clean['root'])
  entries = clean['ade'].entries['val']
  ev = sets.EvalSet(c, 'ade20k_speech_prompted', 0)
  n = len(entries)
  assert n == len(ev) == 8
  for j, e in enumerate(entries):
    g = ev.read(j)
    assert g['gt'].shape == (S, S) and g['gt'].dtype == bool
    assert g['prompt_class'] == e.meta['class_id']
    assert g['prompt_start'] == np.float32(e.meta['timing'][0])
    assert g['prompt_end'] == np.float32(e.meta['timing'][1])
    assert g['prompt_start'].dtype == g['prompt_end'].dtype == np.float32
    # The fixture's class-id map, nearest-resized on its short side and centre-cropped.
    truth = np.asarray(transforms.center_crop(transforms.resize_short_side(
        Image.fromarray(e.label.astype(np.int32)), S, Image.NEAREST), S))
    cls = e.meta['class_id']
    assert (truth == cls).any()
    np.testing.assert_array_equal(g['gt'], truth == cls)
    np.testing.assert_array_equal(g['image'], transforms.eval_image(Image.fromarray(e.image), S))


# ------------------------------------------------------------ prepared records on a bucket


def test_prepared_dir_on_a_bucket_is_read_from_a_local_copy(prepared, tmp_path, monkeypatch):
  """data.prepared_dir=gs://...: the split's shards and metadata are copied once to
  data.cache_dir (through transient errors) and give the same examples as the local set;
  a cache without room is one line naming data.cache_dir."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.sources import staging  # pylint: disable=g-import-not-at-top
  from denseav_jax.testing import gcs  # pylint: disable=g-import-not-at-top
  with gcs.Emulator(bucket='data', fail_every=23) as emu:
    emu.activate()
    for folder, _, files in os.walk(prepared):  # Uploaded as `gcloud storage cp -r` would.
      for name in files:
        rel = os.path.relpath(os.path.join(folder, name), prepared)
        epath.Path(os.path.join(folder, name)).copy(epath.Path(emu.url('prepared', rel)))
    cache = tmp_path / 'cache'
    remote = _config(raw_dir='', prepared_dir=emu.url('prepared'), cache_dir=str(cache))
    local = _config(raw_dir='', prepared_dir=prepared)
    rs, ls = sources.make(remote, 'train'), sources.make(local, 'train')
    assert rs.path.startswith(str(cache)) and len(rs) == len(ls) == 16
    for i in (0, 7, 15):
      a, b = rs.record(i), ls.record(i)
      assert a['id'] == b['id']
      np.testing.assert_array_equal(a['audio'], b['audio'])
    copied = sorted(p.name for p in epath.Path(rs.path).iterdir())
    assert any('-train.array_record' in n for n in copied)
    assert not any('-val.array_record' in n for n in copied)  # Only the split read.
    assert emu.failed_requests > 0
    said = []
    staging.local_copy(emu.url('prepared', 'places_audio', base.PREPARED_VERSION), 'train',
                       str(cache), log=said.append)
    assert not said  # Everything already there: nothing copied again.
    Usage = collections.namedtuple('Usage', 'total used free')
    monkeypatch.setattr(staging.shutil, 'disk_usage', lambda p: Usage(1, 1, 10))
    with pytest.raises(errors.DataError, match=r'data\.cache_dir=.*GiB free'):
      sources.make(_config(raw_dir='', prepared_dir=emu.url('prepared'),
                           cache_dir=str(tmp_path / 'small')), 'val')
