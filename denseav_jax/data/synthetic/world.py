"""What the synthetic world is made of: its classes, words, voices, splits and knobs.

Class id c (1-based) is ``CLASS_NAMES[c - 1]``; 0 is the background in a class map and a
filler word in a caption. Captions are spoken by the training voices (``TRAIN_VOICES``) or,
on the evaluation splits, by a held-out voice (``EVAL_VOICES``); a speech prompt may be
wrapped in filler words (``PROMPT_TEMPLATES``). ``WorldConfig`` holds every knob of the
world and validates them on construction. The other modules of ``denseav_jax.data.synthetic``
build on this one, which imports none of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

CLASS_NAMES = ("ball", "box", "tent", "star", "ring", "cross", "moon", "kite", "drum", "leaf")
FILLER_WORDS = ("the", "a", "and", "with", "there", "is")

SPLITS = {"train": 0, "speech_prompted": 1, "sound_prompted": 2, "retrieval": 3}
DEFAULT_NUM_EXAMPLES = {"speech_prompted": 256, "sound_prompted": 256, "retrieval": 512}
TRAIN_LENGTH = 2**31 - 1
MODALITIES = ("speech", "sound", "mixed")

# Training voices of assets/speech_clips.npz (make_speech_clips.TRAIN_VOICES): English accents with
# male/female/klatt espeak variants at different speeds and pitches. The eval voice (en-029,
# Caribbean accent) is rendered too but held out: no training voice shares its accent.
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f2", "en-gb+f3",
                "en-gb-x-rp+m3", "en-gb-x-gbclan", "en-gb-x-gbcwmd+f4", "en-us-nyc+m7",
                "en-gb-scotland+f5", "en-us+klatt2")
EVAL_VOICES = ("en-029",)

# Filler words wrapped around a speech prompt: (before, after). The name sits in between.
PROMPT_TEMPLATES = (
    (("the",), ()),
    (("a",), ()),
    (("there", "is", "a"), ()),
    (("with", "the"), ()),
    (("the",), ("is", "there")),
    (("and", "a"), ()),
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Every knob of the synthetic world. Ranges are (low, high) and sampled uniformly."""

  image_size: int = 64                  # S: images are [S, S, 3]
  sample_rate: int = 16000              # audio rate (clips are resampled if not 16 kHz)
  audio_seconds: float = 3.0            # fixed clip length L = audio_seconds * sample_rate
  num_classes: int = 10                 # uses CLASS_NAMES[:num_classes]; 8..10
  min_objects: int = 1
  max_objects: int = 3
  object_scale: tuple[float, float] = (0.2, 0.35)     # object side as a fraction of S
  max_rotation_deg: float = 20.0        # random in-plane rotation of each object
  min_center_distance: float = 0.8      # centres >= this * (r_i + r_j) apart (partial overlap)
  min_visible_fraction: float = 0.35    # re-place objects until each keeps this much visible
  colour_jitter: float = 12.0           # per-channel +- jitter of object colours (0-255 units)
  clutter_lines: tuple[int, int] = (1, 3)
  clutter_blobs: tuple[int, int] = (1, 3)
  pixel_noise_std: float = 4.0          # Gaussian sensor noise on the whole image (0-255 units)
  speech_prob: float = 0.5              # P(speech) for the 'mixed' modality
  filler_prob: float = 0.35             # P(a filler word precedes each name in a caption)
  prompt_filler_prob: float = 0.75      # P(a speech prompt is wrapped in filler words)
  gap_seconds: tuple[float, float] = (0.05, 0.4)      # silence after each word/sound
  lead_seconds: tuple[float, float] = (0.0, 0.3)      # silence before the first word/sound
  word_gain_db: float = 3.0             # per-word loudness jitter (+- dB)
  gain: tuple[float, float] = (0.3, 1.0)              # linear gain of the whole caption
  snr_db: tuple[float, float] = (20.0, 40.0)          # white noise over the valid part
  train_voices: tuple[str, ...] = TRAIN_VOICES
  eval_voices: tuple[str, ...] = EVAL_VOICES
  # Train-only speech augmentation (never applied to the evaluation splits): every spoken word is
  # resampled by a factor U(low, high) (> 1 is faster and higher; tempo and pitch change together,
  # like Kaldi speed perturbation). (1.0, 1.0) turns it off.
  speed_perturb: tuple[float, float] = (0.88, 1.12)
  max_words: int = 8                    # W: word_classes / word_times padding

  def __post_init__(self):
    for name in ("object_scale", "clutter_lines", "clutter_blobs", "gap_seconds",
                 "lead_seconds", "gain", "snr_db", "speed_perturb", "train_voices",
                 "eval_voices"):
      value = getattr(self, name)
      if isinstance(value, (list, np.ndarray)):
        object.__setattr__(self, name, tuple(value.tolist() if isinstance(value, np.ndarray)
                                             else value))
    self.validate()

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WorldConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"WorldConfig: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES[:self.num_classes]

  @property
  def num_samples(self) -> int:
    return int(round(self.audio_seconds * self.sample_rate))

  def validate(self) -> None:
    def err(msg):
      raise ValueError(f"WorldConfig: {msg}")

    def check_range(name, lo_ok, hi_ok=None, integer=False):
      value = getattr(self, name)
      if not (isinstance(value, tuple) and len(value) == 2):
        err(f"{name} must be a (low, high) pair, got {value!r}")
      lo, hi = value
      if integer and not all(isinstance(v, (int, np.integer)) for v in value):
        err(f"{name} must hold integers, got {value!r}")
      if not (lo <= hi and lo_ok(lo) and (hi_ok or lo_ok)(hi)):
        err(f"{name}={value!r} is not a valid range (need low <= high within bounds)")

    if not 16 <= self.image_size <= 1024:
      err(f"image_size must be in [16, 1024], got {self.image_size}")
    if not 4000 <= self.sample_rate <= 96000:
      err(f"sample_rate must be in [4000, 96000], got {self.sample_rate}")
    if not self.audio_seconds > 0:
      err(f"audio_seconds must be > 0, got {self.audio_seconds}")
    if not 8 <= self.num_classes <= len(CLASS_NAMES):
      err(f"num_classes must be in [8, {len(CLASS_NAMES)}], got {self.num_classes}")
    if not 1 <= self.min_objects <= self.max_objects <= self.num_classes:
      err(f"need 1 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects}) "
          f"<= num_classes ({self.num_classes})")
    if self.max_objects > self.max_words:
      err(f"max_words ({self.max_words}) must be >= max_objects ({self.max_objects})")
    if max(len(b) + len(a) for b, a in PROMPT_TEMPLATES) + 1 > self.max_words:
      err(f"max_words ({self.max_words}) is too small for the speech prompt templates")
    check_range("object_scale", lambda v: 0.02 <= v <= 0.9)
    check_range("clutter_lines", lambda v: 0 <= v <= 50, integer=True)
    check_range("clutter_blobs", lambda v: 0 <= v <= 50, integer=True)
    check_range("gap_seconds", lambda v: v >= 0)
    check_range("lead_seconds", lambda v: v >= 0)
    check_range("gain", lambda v: v > 0)
    check_range("snr_db", lambda v: v > -20)
    check_range("speed_perturb", lambda v: 0.5 <= v <= 2.0)
    for name in ("speech_prob", "filler_prob", "prompt_filler_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        err(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
    if not 0.0 <= self.min_visible_fraction <= 1.0:
      err(f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}")
    if not 0.0 <= self.min_center_distance <= 2.0:
      err(f"min_center_distance must be in [0, 2], got {self.min_center_distance}")
    for name in ("max_rotation_deg", "colour_jitter", "pixel_noise_std", "word_gain_db"):
      if getattr(self, name) < 0:
        err(f"{name} must be >= 0, got {getattr(self, name)}")
    for name in ("train_voices", "eval_voices"):
      voices = getattr(self, name)
      if not voices or not all(isinstance(v, str) for v in voices):
        err(f"{name} must be a non-empty tuple of voice names, got {voices!r}")

