"""Spoken words of the synthetic world: espeak-ng clips rendered once, read back here.

``assets/speech_clips.npz`` holds every word of the world (the class names, then the filler
words) spoken by every voice, rendered by ``python -m denseav_jax.tools.make_speech_clips``.
``load_speech_clips`` reads it once per process and sample rate; ``resample_speed`` is the
training-only speed perturbation of a spoken word.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from denseav_jax.data import audio_io
from denseav_jax.data.synthetic import world


# The asset lives in denseav_jax/data/assets/ (package data, see setup.cfg).
SPEECH_CLIPS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "assets",
                                 "speech_clips.npz")


@dataclasses.dataclass(frozen=True)
class SpeechClips:
  """All rendered words: clip(voice, word) is a float32 view in [-1, 1]."""

  audio: np.ndarray          # float32 [N], every clip concatenated
  offsets: np.ndarray        # int64 [V * W + 1]
  words: tuple[str, ...]     # W words: class names then fillers
  voices: tuple[str, ...]    # V voices
  sample_rate: int

  def voice_index(self, voice: str) -> int:
    if voice not in self.voices:
      raise ValueError(f"unknown voice {voice!r}; {SPEECH_CLIPS_PATH} has {list(self.voices)}")
    return self.voices.index(voice)

  def word_index(self, word: str) -> int:
    return self.words.index(word)

  def clip(self, voice: int, word: int) -> np.ndarray:
    k = voice * len(self.words) + word
    return self.audio[self.offsets[k]:self.offsets[k + 1]]

  def length(self, voice: int, word: int) -> int:
    k = voice * len(self.words) + word
    return int(self.offsets[k + 1] - self.offsets[k])


@functools.lru_cache(maxsize=None)
def load_speech_clips(sample_rate: int = 16000) -> SpeechClips:
  """Loads (once per process) the rendered word clips, resampled to `sample_rate`."""
  if not os.path.exists(SPEECH_CLIPS_PATH):
    raise FileNotFoundError(
        f"{SPEECH_CLIPS_PATH} is missing. Render it once with "
        "`python -m denseav_jax.tools.make_speech_clips` (needs espeak-ng installed).")
  with np.load(SPEECH_CLIPS_PATH, allow_pickle=False) as d:
    audio = d["audio"].astype(np.float32) / 32768.0
    offsets = d["offsets"].astype(np.int64)
    words = tuple(str(w) for w in d["words"])
    voices = tuple(str(v) for v in d["voices"])
    rate = int(d["sample_rate"])
  names = world.CLASS_NAMES
  if words[:len(names)] != names or not set(world.FILLER_WORDS) <= set(words):
    raise ValueError(f"{SPEECH_CLIPS_PATH} has words {words}, expected {names} + fillers; "
                     "re-render it with `python -m denseav_jax.tools.make_speech_clips`.")
  if rate != sample_rate:
    clips = [audio_io.resample(audio[offsets[k]:offsets[k + 1]], rate, sample_rate)
             for k in range(len(offsets) - 1)]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
    audio = np.concatenate(clips)
  audio.setflags(write=False)
  return SpeechClips(audio, offsets, words, voices, sample_rate)

def word_clips(clips: SpeechClips, voice: int, words) -> list[np.ndarray]:
  """The clips of `words` (strings) spoken by voice index `voice`, in order."""
  return [clips.clip(voice, clips.word_index(wd)) for wd in words]


def resample_speed(x: np.ndarray, factor: float) -> np.ndarray:
  """Plays `x` `factor` times faster (shorter and higher for factor > 1); float32.

  round(len(x) / factor) samples, resampled with the project's resampler (soxr).
  """
  if factor == 1.0 or len(x) < 2:
    return np.asarray(x, np.float32)
  return audio_io.resample(x, 16000 * factor, 16000)

