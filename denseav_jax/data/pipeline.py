"""Grain input pipelines: the endless training stream and the fixed evaluation sets.

Every source is random access and deterministic (example i is a pure function of
(seed, split, i)), so the training iterator's whole state is a position: Orbax saves it
next to the train state and a resumed run continues with exactly the next batch.
Each process reads only its own slice of every global batch.
"""

import grain
import jax
import ml_collections
import numpy as np

from denseav_jax.data import synthetic

# What the model consumes; the rest of an example (class maps, timings) stays on the host.
MODEL_INPUTS = ('image', 'audio', 'audio_len')
# Training batches also carry the source label (0 speech, 1 sound) for loss.disentangle.
TRAIN_INPUTS = MODEL_INPUTS + ('source',)


def world_config(config: ml_collections.ConfigDict) -> synthetic.WorldConfig:
  world = dict(config.data.world)
  world.setdefault('sample_rate', config.data.sample_rate)
  return synthetic.WorldConfig.from_dict(world)


def make_source(config: ml_collections.ConfigDict, split: str, num_examples: int | None = None):
  if config.data.name != 'synthetic':
    raise ValueError(f"config.data.name={config.data.name!r}: only 'synthetic' is available")
  # Evaluation sets have fixed modalities (retrieval: speech captions).
  modality = config.data.modality if split == 'train' else None
  return synthetic.SyntheticAVSource(split, world_config(config), seed=config.seed,
                                     modality=modality, num_examples=num_examples)


def _select(keys):
  def fn(example):
    return {k: example[k] for k in keys}
  return fn


def local_batch_size(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f'batch_size={global_batch} is not divisible by the {n} processes')
  return global_batch // n


def train_iterator(config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  """Checkpointable iterator over this process's part of each global training batch.

  Global batch g holds examples [g * B, (g + 1) * B); process p reads the p-th contiguous
  slice, so the stream does not depend on how many processes read it.
  """
  source = make_source(config, 'train')
  b = config.batch_size
  local = local_batch_size(b)
  p = jax.process_index()
  num_batches = len(source) // b
  ds = grain.MapDataset.range(num_batches * local).map(
      lambda i: (i // local) * b + p * local + i % local)
  ds = ds.map(lambda i: _select(TRAIN_INPUTS)(source[int(i)]))
  ds = ds.batch(local, drop_remainder=True)
  read = grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=config.data.prefetch)
  return iter(ds.to_iter_dataset(read))


def load_eval_set(config: ml_collections.ConfigDict, split: str, num_examples: int):
  """A whole evaluation set as a dict of stacked numpy arrays (host memory)."""
  source = make_source(config, split, num_examples)
  ds = grain.MapDataset.source(source).batch(64)
  read = grain.ReadOptions(num_threads=config.data.num_threads, prefetch_buffer_size=2)
  parts = list(ds.to_iter_dataset(read))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
