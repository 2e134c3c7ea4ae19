"""Captions of the synthetic world laid out on a fixed-length waveform.

``lay_out`` places an example's words or sounds one after another, with random silences,
per-word loudness, an overall gain and background noise, and records when each is heard
(the ground truth of the prompted evaluations). ``check_fits`` tells, before any example is
made, whether a world's longest caption fits into its ``audio_seconds``.
"""

from __future__ import annotations

import numpy as np

from denseav_jax.data.synthetic import sound
from denseav_jax.data.synthetic import speech
from denseav_jax.data.synthetic import world


def lay_out(rng: np.random.Generator, w: world.WorldConfig, segments, classes, droppable):
  """Places segments in order with random lead/gaps; adds gain and noise.

  `droppable[i]` marks filler words that may be removed if the caption would not fit.
  Returns audio float32 [L], audio_len, word_classes [W], word_times [W, 2].
  """
  sr, n_total = w.sample_rate, w.num_samples
  lead = int(rng.uniform(*w.lead_seconds) * sr)
  gaps = (rng.uniform(*w.gap_seconds, len(segments)) * sr).astype(int)
  word_gain = 10 ** (rng.uniform(-w.word_gain_db, w.word_gain_db, len(segments)) / 20)
  keep = list(range(len(segments)))

  def length():
    return lead + sum(len(segments[i]) + gaps[i] for i in keep)

  # Too many words or too long: drop fillers from the end, then shrink silences.
  while (len(keep) > w.max_words or length() > n_total) and any(droppable[i] for i in keep):
    keep.remove([i for i in keep if droppable[i]][-1])
  if length() > n_total:
    lead = 0
    gaps[:] = int(w.gap_seconds[0] * sr)
  if length() > n_total or len(keep) > w.max_words:
    raise ValueError(
        f"caption of {len(keep)} words needs {length() / sr:.2f} s > audio_seconds="
        f"{w.audio_seconds}; raise audio_seconds or lower max_objects/gap_seconds")

  audio = np.zeros(n_total, np.float32)
  word_classes = np.full(w.max_words, -1, np.int32)
  word_times = np.zeros((w.max_words, 2), np.float32)
  pos = lead
  for j, i in enumerate(keep):
    seg = segments[i]
    audio[pos:pos + len(seg)] = seg * word_gain[i]
    word_classes[j] = classes[i]
    word_times[j] = (pos / sr, (pos + len(seg)) / sr)
    pos += len(seg) + gaps[i]
  audio_len = min(pos, n_total)
  valid = audio[:audio_len]
  valid *= rng.uniform(*w.gain)
  rms = np.sqrt(np.mean(valid * valid))
  snr = rng.uniform(*w.snr_db)
  valid += rng.standard_normal(audio_len, dtype=np.float32) * np.float32(rms / 10 ** (snr / 20))
  return audio, audio_len, word_classes, word_times


def check_fits(w: world.WorldConfig, clips: speech.SpeechClips | None = None) -> None:
  """Raises ValueError if `max_objects` names or sounds cannot fit into `audio_seconds`."""
  clips = clips or speech.load_speech_clips(w.sample_rate)
  sr, gap = w.sample_rate, int(w.gap_seconds[0] * w.sample_rate)
  for voice in w.train_voices + w.eval_voices:
    v = clips.voice_index(voice)
    # Training words may be slowed down by speed_perturb (eval words never are).
    stretch = 1.0 / w.speed_perturb[0] if voice in w.train_voices else 1.0
    length = lambda k: int(np.ceil(clips.length(v, k) * max(stretch, 1.0))) + 1
    names = sorted((length(c) for c in range(w.num_classes)), reverse=True)
    need = sum(names[:w.max_objects]) + w.max_objects * gap
    if voice in w.eval_voices:              # speech prompts (fillers kept) use eval voices only
      longest_prompt = max(sum(length(clips.word_index(x)) + gap for x in b + a)
                           for b, a in world.PROMPT_TEMPLATES) + names[0] + gap
      need = max(need, longest_prompt)
    if need > w.num_samples:
      raise ValueError(
          f"WorldConfig: {w.max_objects} spoken names (voice {voice!r}) need {need / sr:.2f} s "
          f"but audio_seconds={w.audio_seconds}; raise audio_seconds or lower max_objects")
  sounds = sorted(sound.SOUND_SECONDS, reverse=True)[:w.max_objects]
  need = sum(sounds) * (1 + sound.SOUND_DURATION_JITTER) * sr + w.max_objects * gap
  if need > w.num_samples:
    raise ValueError(
        f"WorldConfig: {w.max_objects} object sounds need up to {need / sr:.2f} s but "
        f"audio_seconds={w.audio_seconds}; raise audio_seconds or lower max_objects")

