"""Evaluation sets: a fixed, ordered list of examples that any host can read any part of.

  synthetic:SPLIT[:MODALITY]   the built-in world's speech_prompted / sound_prompted /
                               retrieval set (retrieval captions: speech, sound or mixed)
  NAME[:SPLIT]                 a file-backed data set (data/sources), e.g.
                               ade20k_speech_prompted, places_audio:val, audioset:val

Position p of a set is example `indices[p]` of its source: the first `num_examples` (all
when 0), or, for caption/image pair sets, the first `num_examples` of the release's seed-0
permutation (docs/evaluation.md#retrieval). `read(p)` gives that example after the
evaluation transforms, or None (with a warning naming the file) when it is unusable, so
every host agrees on positions whichever host reads them.
"""

from __future__ import annotations

import logging

import numpy as np

from denseav_jax import errors
from denseav_jax.data import examples
from denseav_jax.data import pipeline
from denseav_jax.data import sources
from denseav_jax.data.synthetic import source as synthetic_source

log = logging.getLogger(__name__)

SYNTHETIC_SPLITS = ('speech_prompted', 'sound_prompted', 'retrieval')
EVAL_TAG = 7_000_002  # Separates evaluation reads' seeds from the training stream's.


def parse(dataset: str) -> tuple[str, str, str]:
  """'NAME[:SPLIT[:MODALITY]]' -> (name, split, modality)."""
  parts = str(dataset).split(':')
  if len(parts) > 3 or not parts[0]:
    raise errors.DataError(f'evaluation dataset {dataset!r}: write NAME[:SPLIT] (e.g. '
                                "'places_audio:val') or 'synthetic:SPLIT[:MODALITY]'")
  parts += [''] * (3 - len(parts))
  return parts[0], parts[1], parts[2]


class EvalSet:
  """One evaluation set of a config (see the module docstring)."""

  def __init__(self, config, dataset: str, num_examples: int = 0, *, pairs: bool = False):
    name, split, modality = parse(dataset)
    self.dataset, self.pairs = dataset, pairs
    n = int(num_examples or 0)
    if name == 'synthetic':
      if split not in SYNTHETIC_SPLITS:
        raise errors.DataError(f'evaluation dataset {dataset!r}: the synthetic world\'s '
                                    f'sets are {[f"synthetic:{s}" for s in SYNTHETIC_SPLITS]}')
      self.source = synthetic_source.SyntheticSource(config, split, num_examples=n or None,
                                                     modality=modality or None)
      self.synthetic = True
      self.indices = np.arange(len(self.source))
    else:
      if modality:
        raise errors.DataError(f'evaluation dataset {dataset!r}: only the synthetic '
                                    'world takes a modality')
      self.source = sources.make(config, split or 'val', name)
      self.synthetic = False
      total = len(self.source)
      if pairs:
        self.indices = pipeline.retrieval_subset(total, n or total)
      else:
        self.indices = np.arange(min(total, n) if n else total)
    if not len(self.indices):
      raise errors.DataError(f'evaluation dataset {dataset!r} has no examples')
    self.spec = examples.Spec.from_config(config)
    self.seed = int(config.seed)
    modality = getattr(getattr(self.source, 'world', None), 'modality', '')
    self.key = (name, split, modality, len(self.indices), pairs)

  def __len__(self) -> int:
    return len(self.indices)

  def __repr__(self) -> str:
    return f'EvalSet({self.dataset}, {len(self)} examples)'

  def where(self, position: int) -> str:
    return self.source.where(int(self.indices[position]))

  def read(self, position: int) -> dict[str, np.ndarray] | None:
    """Example at `position` (evaluation transforms), or None if it is unusable.

    Keys: image uint8 [S, S, 3], audio float32 [L], audio_len int32, source int32; for
    prompted sets also gt bool [S, S] (label map == prompt class), prompt_class int32,
    prompt_start / prompt_end float32 seconds; synthetic sets add word_classes /
    word_times (the caption's words, for the figures).
    """
    i = int(self.indices[position])
    if self.synthetic:
      ex = self.source.record(i)
      out = {k: ex[k] for k in ('image', 'audio', 'audio_len', 'source', 'word_classes',
                                'word_times')}
      if int(ex['prompt_class']) > 0:
        out['gt'] = ex['class_map'] == ex['prompt_class']
        for k in ('prompt_class', 'prompt_start', 'prompt_end'):
          out[k] = ex[k]
      return out
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, EVAL_TAG, i]))
    try:
      ex = examples.eval_example(self.source, i, self.spec, rng)
    except errors.BadExample as e:
      log.warning('evaluation set %s: leaving out an unusable example: %s', self.dataset, e)
      return None
    out = {k: ex[k] for k in ('image', 'audio', 'audio_len', 'source')}
    if 'class_map' in ex:
      out['gt'] = ex['class_map'] == ex['prompt_class']
      for k in ('prompt_class', 'prompt_start', 'prompt_end'):
        out[k] = ex[k]
    return out
