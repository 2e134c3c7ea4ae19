"""Mixed: the two-head model's stream of speech and sound (docs/data.md#mixed).

Each example is, with probability 1/2 each, Places Audio example `index` (source label 0)
or a random AudioSet clip (source 1), the choice and the clip drawn from the example's own
generator, so the stream is deterministic. Its length is Places Audio's, as in the release.
Negative audio and mixup partners come from the same data set as the example.
"""

from __future__ import annotations

import numpy as np


class MixedSource:
  name = 'mixed'

  def __init__(self, speech, sound):
    self.speech, self.sound = speech, sound
    self.split = speech.split

  def __len__(self) -> int:
    return len(self.speech)

  def __repr__(self) -> str:
    return f'MixedSource({self.speech!r}, {self.sound!r})'

  def route(self, index: int, rng: np.random.Generator):
    """(source, index in it, source label) of mixed example `index`."""
    if rng.random() < 0.5:
      return self.sound, int(rng.integers(len(self.sound))), 1
    return self.speech, int(index), 0

  def where(self, index: int) -> str:
    return f'mixed/{self.split} #{index}'

  def read(self, index: int, rng: np.random.Generator):
    source, i, label = self.route(index, rng)
    return dict(source.read(i, rng), source=label)
