"""Grain input pipelines: the training stream and the evaluation sets (docs/data.md).

The training stream is a pure function of (config, position). A stream started at global
position s (0, or where a checkpoint left off) reads positions s + k*B .. s + (k+1)*B - 1 as
its k-th global batch of B = config.batch_size; process p of P reads the p-th contiguous
slice of every global batch, so the stream does not depend on how many processes read it.
Position g reads example `order[g]` of the source (a fresh permutation every epoch, drawn
from config.seed; the endless synthetic stream is read in order) with a generator seeded by
(seed, g): its augmentation, mixup partners and splice. An example that cannot be used is
skipped with a warning naming its file and its slot is filled by another example drawn from
the same generator, so every batch is full and a resumed run reads exactly the same stream.
The iterator's state is global: the next position, in examples, and the counts of skipped
examples summed over processes (`TrainStream.state`); a checkpoint holds it once, and any
number of processes restore it with any batch size (`train_iterator(config, state=...)`),
each continuing with its slice of the next global batch: no example skipped or repeated.

The bad-fraction stop (config.data.max_bad_fraction) is decided on counts summed over the
processes: one process checks every batch; several check together when the training loop
gathers their counts (`TrainStream.global_counts`, then `check(counts)`), so every process
stops at the same step with the same message.

Reading runs in `config.data.num_threads` threads (default) or, with
`config.data.worker_processes > 0`, in Grain worker processes.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from denseav_jax import errors
from denseav_jax.data import audio_io
from denseav_jax.data import examples
from denseav_jax.data import sources
from denseav_jax.data.synthetic import world as world_lib

log = logging.getLogger('denseav_jax.data')

# What the model's embedding functions consume; the rest of an eval example stays on the host.
MODEL_INPUTS = ('image', 'audio', 'audio_len')
_STREAM_TAG = 7_000_001  # Separates the training stream's seeds from other uses of the seed.
_POSITIONS = 2**48  # "Endless": far more global positions than any run reads.
BAD_KEY = 'bad_counts'  # Per example: skipped candidates by reason (errors.REASONS order).
_LOGGED_WARNINGS = 200  # Per process: every skipped file is logged up to here, then 1 in 100.


def train_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys of a training batch as the model step receives it."""
  return examples.Spec.from_config(config).train_keys()


def check(config: ml_collections.ConfigDict, paths: bool = True) -> None:
  """config.data (and batch_size, seed) before anything is read or compiled: the data set's
  name and (with `paths`: this machine's folders count) the folder it is read from, the
  synthetic world, the transforms and the reader settings. Raises errors.ConfigError naming
  the key (errors.DataError from the transforms' own check, examples.Spec.validate)."""
  d = config.data
  for key, low in (('batch_size', 1), ('seed', 0)):
    v = config[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
      raise errors.ConfigError(f'config.{key}={v!r} must be an integer >= {low}')
  sources.check_location(config, d.name, paths)
  if d.audio_channels not in audio_io.CHANNEL_MODES:
    raise errors.ConfigError(f'config.data.audio_channels={d.audio_channels!r} is not one of '
                             f'{audio_io.CHANNEL_MODES}')
  for key in ('num_threads', 'worker_processes', 'prefetch'):
    if int(d[key]) < 0:
      raise errors.ConfigError(f'config.data.{key}={d[key]} must be >= 0')
  if not 0 <= float(d.max_bad_fraction) <= 1:
    raise errors.ConfigError(f'config.data.max_bad_fraction={d.max_bad_fraction} must lie in '
                             '[0, 1] (the fraction of unusable examples tolerated)')
  examples.Spec.from_config(config)  # The transforms' keys (errors.DataError).
  if d.name == 'synthetic':
    if d.modality not in world_lib.MODALITIES:
      raise errors.ConfigError(f'config.data.modality={d.modality!r} is not one of '
                               f'{world_lib.MODALITIES}')
    try:
      sources.make(config, 'train')  # The world's own checks (voices, layout, ranges).
    except ValueError as e:
      raise errors.ConfigError(f'config.data.world: {str(e).removeprefix("WorldConfig: ")} '
                               "(data.name='synthetic'; its image size, sample rate and clip "
                               'length come from config.input)') from None


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  n = jax.process_count() if process_count is None else process_count
  if global_batch % n:
    raise ValueError(f'batch_size={global_batch} is not divisible by the {n} processes')
  return global_batch // n


class _Warnings:
  """Rate-limited, thread-safe warnings for skipped examples (one per file up to a cap)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._count = 0

  def __call__(self, err: errors.BadExample, position: int) -> None:
    with self._lock:
      self._count += 1
      n = self._count
    if n <= _LOGGED_WARNINGS or n % 100 == 0:
      log.warning('skipping an unusable example at stream position %d (%d so far): %s',
                  position, n, err)

  def __getstate__(self):
    return {}

  def __setstate__(self, state):
    self.__init__()


class TrainExamples:
  """position -> training example (a picklable callable for Grain's map)."""

  def __init__(self, source, spec: examples.Spec, seed: int, max_attempts: int = 100):
    self.source, self.spec, self.seed = source, spec, int(seed)
    self.max_attempts = max_attempts
    n = len(source)
    if n < 1:
      raise errors.DataError(f'{source!r} has no examples')
    shuffle = getattr(source, 'shuffle', True)
    self._order = (grain.MapDataset.range(n).shuffle(seed=self.seed % 2**32) if shuffle
                   else None)
    self._warn = _Warnings()

  def index(self, position: int) -> int:
    """The source index that stream position `position` reads first."""
    n = len(self.source)
    return int(self._order[position]) if self._order is not None else position % n

  def __call__(self, position: int) -> dict[str, Any]:
    position = int(position)
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM_TAG, position]))
    bad = np.zeros(len(errors.REASONS), np.int32)
    index = self.index(position)
    for _ in range(self.max_attempts):
      try:
        ex = examples.train_example(self.source, index, rng, self.spec)
        ex[BAD_KEY] = bad
        return ex
      except errors.BadExample as e:
        bad[errors.REASONS.index(e.reason)] += 1
        self._warn(e, position)
        index = int(rng.integers(len(self.source)))
    raise errors.DataError(
        f'{self.max_attempts} examples in a row were unusable at stream position {position} '
        f'(by reason: {_by_reason(bad)}): check the data set ({self.source!r}); the warnings '
        'above name the files')


def _by_reason(counts) -> dict[str, int]:
  return {r: int(c) for r, c in zip(errors.REASONS, counts) if c}


class TrainStream:
  """The training iterator: this process's slices of the global batches, model keys only.

  Keeps the counts of skipped examples (logged; past config.data.max_bad_fraction they stop
  the job with one DataError, decided as the module doc says) and the global stream
  position of the next batch's first example.
  """

  def __init__(self, iterator, keys, max_bad_fraction: float, min_examples: int = 200,
               position: int = 0, batch_size: int = 0, check_every_batch: bool = True):
    """`batch_size`: the global batch (0: one process, its batches' own size);
    `check_every_batch`: False where several processes read and decide together."""
    self._it, self.keys = iterator, tuple(keys)
    self.max_bad_fraction, self.min_examples = max_bad_fraction, min_examples
    self.bad = np.zeros(len(errors.REASONS), np.int64)
    self.examples = 0
    self.position = int(position)  # Global stream position of the next batch, in examples.
    self.batch_size = int(batch_size)
    self.check_every_batch = check_every_batch

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    self.bad += batch[BAD_KEY].sum(axis=0)
    self.examples += len(batch[BAD_KEY])
    self.position += self.batch_size or len(batch[BAD_KEY])
    if self.check_every_batch:
      self.check()
    return {k: batch[k] for k in self.keys}

  def _counts(self, counts) -> tuple[np.ndarray, int]:
    if counts is None:
      return self.bad, self.examples
    return np.asarray(counts[0], np.int64), int(counts[1])

  def fraction(self, counts=None) -> float:
    """Skipped / tried, of this process's counts or of `counts` = (bad, examples)."""
    bad, n = self._counts(counts)
    return float(bad.sum()) / max(n + int(bad.sum()), 1)

  @property
  def bad_fraction(self) -> float:
    return self.fraction()

  def global_counts(self) -> tuple[np.ndarray, int]:
    """(skip counts by reason, examples read) summed over every process. A collective:
    every process calls it at the same step (the training loop's log and save steps)."""
    local = np.concatenate([self.bad, [self.examples]]).astype(np.int64)
    if jax.process_count() > 1:
      local = np.asarray(multihost_utils.process_allgather(local)).reshape(
          jax.process_count(), -1).sum(0)
    return local[:-1], int(local[-1])

  def stats(self, counts=None) -> dict[str, float]:
    """Counts of skipped examples so far (this process's, or `counts`), for logs and
    TensorBoard."""
    bad, _ = self._counts(counts)
    out = {'data/bad_fraction': self.fraction(counts), 'data/bad_examples': float(bad.sum())}
    out |= {f'data/bad_{r}': float(c) for r, c in zip(errors.REASONS, bad)}
    return out

  def summary(self, counts=None) -> str:
    bad, examples_read = self._counts(counts)
    n = int(bad.sum())
    if not n:
      return f'data: {examples_read} examples read, none skipped'
    return (f'data: {n} unusable examples skipped ({100 * self.fraction(counts):.2f} % of '
            f'{examples_read + n} read; {_by_reason(bad)})')

  def check(self, counts=None) -> None:
    """DataError once enough examples were tried and too many were unusable, judged on
    this process's counts or on `counts` (the same on every process: the same decision)."""
    bad, n = self._counts(counts)
    if n + int(bad.sum()) >= self.min_examples and self.fraction(counts) > self.max_bad_fraction:
      raise errors.DataError(
          f'{self.summary(counts)}: more than --config.data.max_bad_fraction='
          f'{self.max_bad_fraction}. The warnings above name the files: repair or remove them '
          '(a raw layout is indexed again once its folders change), or raise '
          '--config.data.max_bad_fraction')

  def state(self, counts=None) -> dict[str, Any]:
    """The stream's position as plain JSON: the next global position (in examples, so any
    batch size resumes it) and the skip counts.

    `counts` = (bad, examples) summed over every process (`global_counts`); by default this
    process's own.
    """
    bad, n = self._counts(counts)
    return {'position': self.position, 'bad': [int(x) for x in bad], 'examples': int(n)}

  def start_prefetch(self) -> None:
    if hasattr(self._it, 'start_prefetch'):
      self._it.start_prefetch()

  def close(self) -> None:
    if hasattr(self._it, 'close'):
      self._it.close()


class _Positions:
  """The k-th example this process reads -> its global stream position (picklable)."""

  def __init__(self, global_batch: int, local: int, process_index: int, start: int = 0):
    self.b, self.local, self.p, self.start = global_batch, local, process_index, start

  def __call__(self, k: int) -> int:
    return self.start + (k // self.local) * self.b + self.p * self.local + k % self.local


def train_dataset(config, *, process_index: int | None = None,
                  process_count: int | None = None, start: int = 0) -> grain.MapDataset:
  """This process's training batches as a Grain MapDataset (element k = its slice of the
  global batch of positions start + k*B ..)."""
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  b = config.batch_size
  local = local_batch_size(b, n)
  spec = examples.Spec.from_config(config)
  make = TrainExamples(sources.make(config, 'train'), spec, config.seed)
  ds = grain.MapDataset.range((_POSITIONS - start) // b * local).map(
      _Positions(b, local, p, start))
  return ds.map(make).batch(local, drop_remainder=True)


def train_iterator(config, *, state: dict | None = None, process_index: int | None = None,
                   process_count: int | None = None) -> TrainStream:
  """This process's checkpointable training iterator (see the module doc).

  `state`: a `TrainStream.state()` saved by any number of processes with any batch size;
  the stream continues at its position, and this process takes its share of the saved skip
  counts.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  start = _start(state)
  ds = train_dataset(config, process_index=p, process_count=n, start=start)
  d = config.data
  read = grain.ReadOptions(num_threads=d.num_threads, prefetch_buffer_size=d.prefetch)
  it_ds = ds.to_iter_dataset(read)
  if d.worker_processes:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_processes))
  stream = TrainStream(iter(it_ds), train_keys(config), d.max_bad_fraction,
                       d.bad_fraction_after, position=start, batch_size=config.batch_size,
                       check_every_batch=n == 1)
  if state:
    stream.bad = np.asarray([_share(int(x), p, n) for x in state['bad']], np.int64)
    stream.examples = _share(int(state['examples']), p, n)
  return stream


def _start(state: dict | None) -> int:
  """The global position a saved state continues at (0 without one)."""
  if not state:
    return 0
  if 'position' not in state:
    raise errors.DataError(
        f'the saved data state {sorted(state)} has no example position (a checkpoint of an '
        'earlier denseav_jax, which counted batches): train into a new workdir')
  start = int(state['position'])
  if not 0 <= start < _POSITIONS:
    raise errors.DataError(f'the saved data position {start} is out of range')
  return start


def _share(total: int, p: int, n: int) -> int:
  """Process p's part of a count split over n processes (the parts sum to `total`)."""
  return total // n + (1 if p < total % n else 0)


# ------------------------------------------------------------------- evaluation sets


def retrieval_subset(n: int, size: int) -> np.ndarray:
  """The release's evaluation subset: the first `size` of numpy.random.seed(0);
  numpy.random.permutation(n) (all of them, in order, when n <= size)."""
  if n <= size:
    return np.arange(n)
  return np.random.RandomState(0).permutation(n)[:size]
