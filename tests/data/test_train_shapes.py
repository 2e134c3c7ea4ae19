"""examples.Spec.train_shapes (what an ahead-of-time compile uses instead of data) against a
real batch of the training stream."""

import numpy as np

from conftest import load_config
from denseav_jax.data import examples
from denseav_jax.data import pipeline


def test_train_shapes_match_the_stream():
  config = load_config('denseav_language.py', 'runlocal')  # Every optional key is on.
  with config.unlocked():
    config.batch_size = 2
  stream = pipeline.train_iterator(config)
  try:
    batch = next(stream)
  finally:
    stream.close()
  shapes = examples.Spec.from_config(config).train_shapes()
  assert set(shapes) == set(batch) == set(pipeline.train_keys(config))
  assert {'audio_start', 'pos_mask', 'image_mask'} <= set(shapes)
  for k, (shape, dtype) in shapes.items():
    assert batch[k].shape == (2,) + shape and batch[k].dtype == np.dtype(dtype), k
