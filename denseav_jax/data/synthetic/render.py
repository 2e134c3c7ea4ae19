"""The built-in synthetic audio-visual world: DenseAV's default, download-free data set.

A scene holds 1-3 coloured, textured shapes ("ball", "box", "tent", ...) on a cluttered
background. Its audio is either a spoken caption naming the objects (espeak-ng words rendered
once into ``assets/speech_clips.npz``) or a caption of each object's characteristic procedural
sound. Because the world knows where every object is and when its word/sound is heard, it gives
exact ground truth for DenseAV's evaluations (speech/sound-prompted segmentation, retrieval).

Every example is a pure function of (seed, split, index), computed with numpy on the fly.

Sources follow grain's RandomAccessDataSource protocol::

    src = SyntheticAVSource("train", WorldConfig(), seed=0)          # endless, mixed speech/sound
    ds = grain.MapDataset.source(src).batch(10)
    evals = SyntheticAVSource("speech_prompted", WorldConfig())      # 256 fixed examples

Every example has the same keys/dtypes whatever the split (see ``SyntheticAVSource``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import numpy as np

from denseav_jax.data import audio_io

CLASS_NAMES = ("ball", "box", "tent", "star", "ring", "cross", "moon", "kite", "drum", "leaf")
FILLER_WORDS = ("the", "a", "and", "with", "there", "is")

SPLITS = {"train": 0, "speech_prompted": 1, "sound_prompted": 2, "retrieval": 3}
DEFAULT_NUM_EXAMPLES = {"speech_prompted": 256, "sound_prompted": 256, "retrieval": 512}
TRAIN_LENGTH = 2**31 - 1
MODALITIES = ("speech", "sound", "mixed")

SPEECH_CLIPS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "assets",
                                 "speech_clips.npz")

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


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Speech clips (espeak-ng words rendered once by make_speech_clips.py)
# ------------------------------------------------------------------------------------------------


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
  if words[:len(CLASS_NAMES)] != CLASS_NAMES or not set(FILLER_WORDS) <= set(words):
    raise ValueError(f"{SPEECH_CLIPS_PATH} has words {words}, expected {CLASS_NAMES} + fillers; "
                     "re-render it with `python -m denseav_jax.tools.make_speech_clips`.")
  if rate != sample_rate:
    clips = [audio_io.resample(audio[offsets[k]:offsets[k + 1]], rate, sample_rate)
             for k in range(len(offsets) - 1)]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
    audio = np.concatenate(clips)
  audio.setflags(write=False)
  return SpeechClips(audio, offsets, words, voices, sample_rate)


# ------------------------------------------------------------------------------------------------
# Objects: shapes, colours, textures
# ------------------------------------------------------------------------------------------------
# Shapes are indicator functions of local coordinates (u, v) in [-1, 1] (v points down), drawn
# inside a square of half-side r around the object's centre.


def _star(u, v):
  rho = np.sqrt(u * u + v * v)
  theta = np.arctan2(u, -v)                     # 0 at the top point
  sector = 2 * np.pi / 5
  phi = np.mod(theta, sector)
  phi = np.minimum(phi, sector - phi)           # fold onto [0, pi/5]
  x, y = rho * np.cos(phi), rho * np.sin(phi)
  # Edge from outer vertex (1, 0) to inner vertex at angle pi/5, radius 0.45.
  ix, iy = 0.45 * np.cos(sector / 2), 0.45 * np.sin(sector / 2)
  return (x - 1.0) * iy - y * (ix - 1.0) <= 0.0


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ball": lambda u, v: u * u + v * v <= 1.0,
    "box": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.85,
    "tent": lambda u, v: (v <= 0.8) & (np.abs(u) <= 0.55 * (v + 1.0)),
    "star": _star,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    "cross": lambda u, v: (np.minimum(np.abs(u), np.abs(v)) <= 0.32)
                          & (np.maximum(np.abs(u), np.abs(v)) <= 1.0),
    "moon": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + (v + 0.15) ** 2 >= 0.64),
    "kite": lambda u, v: np.abs(u) / 0.65 + np.abs(v) <= 1.0,
    "drum": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.55),
    # Pointed ellipse (lens) on the diagonal.
    "leaf": lambda u, v: (((u + v) * 0.7071 - 0.5) ** 2 + ((v - u) * 0.7071) ** 2 <= 1.0)
                         & (((u + v) * 0.7071 + 0.5) ** 2 + ((v - u) * 0.7071) ** 2 <= 1.0),
}

_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.zeros(u.shape, bool),
    "checker": lambda u, v: (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0,
    "hstripes": lambda u, v: np.floor(v * 3.0) % 2 == 0,
    "vstripes": lambda u, v: np.floor(u * 3.5) % 2 == 0,
    "dstripes": lambda u, v: np.floor((u + v) * 2.5) % 2 == 0,
    "dots": lambda u, v: (np.mod(u * 2.5, 1.0) - 0.5) ** 2 + (np.mod(v * 2.5, 1.0) - 0.5) ** 2
                         <= 0.07,
}

# name -> (RGB colour, texture). The texture's "dark" cells use 0.5 x the colour.
CLASS_STYLE = {
    "ball": ((225, 30, 30), "solid"),
    "box": ((35, 70, 235), "checker"),
    "tent": ((20, 170, 50), "hstripes"),
    "star": ((250, 215, 20), "solid"),
    "ring": ((160, 40, 220), "solid"),
    "cross": ((255, 125, 0), "solid"),
    "moon": ((0, 205, 225), "solid"),
    "kite": ((255, 70, 170), "dstripes"),
    "drum": ((150, 75, 20), "vstripes"),
    "leaf": ((140, 235, 30), "dots"),
}


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bilinear (half-pixel centres, edge-clamped) interpolation weights."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  w = np.zeros((n_out, n_in), np.float32)
  w[np.arange(n_out), lo] += 1 - (pos - lo)
  w[np.arange(n_out), hi] += pos - lo
  return w


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = np.arange(size, dtype=np.float32) + 0.5
  return c[:, None], c[None, :]


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
  """A low-saturation colour: grey level plus a small tint."""
  return rng.uniform(50, 200) + rng.uniform(-25, 25, 3)


def _background(rng: np.random.Generator, w: WorldConfig) -> np.ndarray:
  """Smooth low-saturation colour field plus clutter lines and soft blobs; float32 [S, S, 3]."""
  s = w.image_size
  g = int(rng.integers(3, 7))
  field = (rng.uniform(70, 185) + rng.normal(0, 22, (g, g, 1))
           + rng.normal(0, 10, (g, g, 3))).astype(np.float32)
  m = _upsample_matrix(g, s)
  img = np.einsum("yg,ghc,xh->yxc", m, field, m, optimize=True)
  ys, xs = _pixel_grid(s)
  for _ in range(int(rng.integers(w.clutter_lines[0], w.clutter_lines[1] + 1))):
    p0, p1 = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
    half = rng.uniform(0.5, max(0.6, 0.025 * s))
    d = p1 - p0
    t = np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
    dist2 = (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2
    img[dist2 <= half * half] = _muted_colour(rng)
  for _ in range(int(rng.integers(w.clutter_blobs[0], w.clutter_blobs[1] + 1))):
    cx, cy = rng.uniform(0, s, 2)
    rx, ry = rng.uniform(0.06, 0.2, 2) * s
    alpha = rng.uniform(0.3, 0.6) * np.exp(-((xs - cx) / rx) ** 2 - ((ys - cy) / ry) ** 2)
    img += alpha[..., None] * (_muted_colour(rng).astype(np.float32) - img)
  return img


def _place(rng, n, radii, s, min_dist, max_tries=30):
  """Centres inside the image, pairwise >= min_dist * (r_i + r_j) apart (best effort)."""
  centres = np.zeros((n, 2))
  for i in range(n):
    for _ in range(max_tries):
      c = rng.uniform(radii[i], s - radii[i], 2)
      if i == 0 or np.all(np.hypot(*(centres[:i] - c).T) >= min_dist * (radii[:i] + radii[i])):
        break
    centres[i] = c
  return centres


def _object_masks(classes, centres, radii, angles, s):
  """Per object: (row slice, col slice, u, v, mask) in its bounding square."""
  out = []
  for cid, (cx, cy), r, a in zip(classes, centres, radii, angles):
    y0, y1 = max(0, int(cy - r)), min(s, int(np.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(cx - r)), min(s, int(np.ceil(cx + r)) + 1)
    yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / r
    xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / r
    ca, sa = np.cos(a), np.sin(a)
    u, v = ca * xx + sa * yy, ca * yy - sa * xx
    mask = _SHAPES[CLASS_NAMES[cid - 1]](u, v)
    out.append((slice(y0, y1), slice(x0, x1), u, v, mask))
  return out


def render_scene(rng: np.random.Generator, w: WorldConfig,
                 classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Draws objects of the given 1-based class ids (drawing order = occlusion order).

  Returns image uint8 [S, S, 3] and class map uint8 [S, S] (0 = background, else the class id
  of the visible object).
  """
  s = w.image_size
  n = len(classes)
  img = _background(rng, w)
  radii = rng.uniform(*w.object_scale, n) * s / 2
  angles = np.deg2rad(rng.uniform(-w.max_rotation_deg, w.max_rotation_deg, n))
  class_map = np.zeros((s, s), np.uint8)
  for attempt in range(12):
    if attempt < 11:
      centres = _place(rng, n, radii, s, w.min_center_distance)
    else:                                   # last resort: one object per grid cell, no overlap
      k = int(np.ceil(np.sqrt(n)))
      cell = s / k
      radii = np.minimum(radii, 0.45 * cell)
      slots = rng.permutation(k * k)[:n]
      centres = np.stack([(slots % k + 0.5) * cell, (slots // k + 0.5) * cell], 1)
    objs = _object_masks(classes, centres, radii, angles, s)
    class_map[:] = 0
    for cid, (ys, xs, _, _, mask) in zip(classes, objs):
      class_map[ys, xs][mask] = cid
    visible = np.bincount(class_map.ravel(), minlength=w.num_classes + 1)[classes]
    area = np.array([o[4].sum() for o in objs])
    if np.all(visible >= np.maximum(1, w.min_visible_fraction * area)):
      break
  for cid, (ys, xs, u, v, mask) in zip(classes, objs):
    colour, texture = CLASS_STYLE[CLASS_NAMES[cid - 1]]
    colour = np.asarray(colour, np.float32) + rng.uniform(-w.colour_jitter, w.colour_jitter, 3)
    dark = _TEXTURES[texture](u, v)
    patch = np.where(dark[..., None], 0.5 * colour, colour)
    sel = class_map[ys, xs] == cid
    img[ys, xs][sel] = patch[sel]
  if w.pixel_noise_std > 0:
    img += rng.standard_normal(img.shape, dtype=np.float32) * w.pixel_noise_std
  return np.clip(img, 0, 255).astype(np.uint8), class_map


# ------------------------------------------------------------------------------------------------
# Sounds: one procedural non-speech sound per class
# ------------------------------------------------------------------------------------------------

# Nominal durations (s); each instance is scaled by U(0.85, 1.15), so 0.35-0.7 s.
SOUND_SECONDS = (0.5, 0.45, 0.42, 0.55, 0.58, 0.5, 0.6, 0.42, 0.5, 0.6)
SOUND_DURATION_JITTER = 0.15
SOUND_PITCH_JITTER = 0.05


def _band_noise(rng, n, sr, lo, hi):
  spec = np.fft.rfft(rng.standard_normal(n))
  f = np.fft.rfftfreq(n, 1 / sr)
  spec[(f < lo) | (f > hi)] = 0
  x = np.fft.irfft(spec, n)
  return x / (np.abs(x).max() + 1e-9)


def _bursts(t, onsets, decay):
  """Sum of decaying envelopes (2 ms attack, no click) starting at `onsets` (seconds)."""
  env = np.zeros_like(t)
  for o in onsets:
    dt = np.maximum(t - o, 0)
    env += np.minimum(dt / 0.002, 1.0) * np.exp(-dt / decay)
  return env


def synth_sound(cid: int, rng: np.random.Generator, sr: int) -> np.ndarray:
  """One instance of class `cid`'s (1-based) sound: float32, peak 0.8."""
  p = 1 + rng.uniform(-SOUND_PITCH_JITTER, SOUND_PITCH_JITTER)
  dur = SOUND_SECONDS[cid - 1] * (1 + rng.uniform(-SOUND_DURATION_JITTER, SOUND_DURATION_JITTER))
  n = int(dur * sr)
  t = np.arange(n) / sr
  tau = 2 * np.pi
  name = CLASS_NAMES[cid - 1]
  if name == "ball":        # bouncing: low thumps, accelerating, pitch falling in each bounce
    onsets = dur * np.array([0.0, 0.4, 0.68, 0.87])
    x = _bursts(t, onsets, 0.045) * np.sin(tau * 170 * p * t * (1 - 0.3 * t))
  elif name == "box":       # square-ish buzz
    f = 210 * p
    x = sum(np.sin(tau * k * f * t) / k for k in (1, 3, 5, 7, 9))
  elif name == "tent":      # upward chirp
    f0, f1 = 450 * p, 1500 * p
    x = np.sin(tau * (f0 * t + (f1 - f0) * t * t / (2 * dur)))
  elif name == "star":      # twinkle: high bell partials pulsing at ~14 Hz
    x = (np.sin(tau * 2400 * p * t) + 0.5 * np.sin(tau * 3700 * p * t)) \
        * np.sin(np.pi * 14 * t) ** 4
  elif name == "ring":      # phone-like trill: two tones gated at 25 Hz
    x = (np.sin(tau * 950 * p * t) + 0.7 * np.sin(tau * 1250 * p * t)) \
        * np.clip(3 * np.sin(tau * 25 * t), 0, 1)
  elif name == "cross":     # steady high hiss (3-5 kHz) that swells and fades
    x = _band_noise(rng, n, sr, 3000 * p, min(5000 * p, 0.49 * sr)) \
        * np.sin(np.pi * t / dur) ** 0.5
  elif name == "moon":      # low hoot with 6 Hz vibrato
    f = 300 * p
    x = np.sin(tau * f * t + 0.15 * f / 6 * np.sin(tau * 6 * t)) \
        + 0.3 * np.sin(tau * 2 * f * t)
    x = x * np.sin(np.pi * t / dur)
  elif name == "kite":      # downward chirp with a 2nd harmonic
    f0, f1 = 1700 * p, 500 * p
    ph = tau * (f0 * t + (f1 - f0) * t * t / (2 * dur))
    x = np.sin(ph) + 0.6 * np.sin(2 * ph)
  elif name == "drum":      # regular low drum hits with a noisy attack
    env = _bursts(t, np.arange(0, dur, 1 / 9), 0.035)
    x = env * (np.sin(tau * 75 * p * t) + 0.4 * rng.standard_normal(n) * env)
  elif name == "leaf":      # rustle: low-mid noise band with slow tremolo
    x = _band_noise(rng, n, sr, 300 * p, 1200 * p) \
        * (0.55 + 0.45 * np.sin(tau * 3.5 * t + rng.uniform(0, tau)))
  else:
    raise ValueError(f"no sound for class {cid}")
  fade = int(0.005 * sr)
  ramp = np.linspace(0, 1, fade, endpoint=False)
  x[:fade] *= ramp
  x[n - fade:] *= ramp[::-1]
  return (x * (0.8 / (np.abs(x).max() + 1e-9))).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Captions: segments laid out on a fixed-length waveform
# ------------------------------------------------------------------------------------------------


def _layout(rng, w: WorldConfig, segments, classes, droppable):
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


def _speech_words(clips: SpeechClips, voice: int, words):
  return [clips.clip(voice, clips.word_index(wd)) for wd in words]


def resample_speed(x: np.ndarray, factor: float) -> np.ndarray:
  """Plays `x` `factor` times faster (shorter and higher for factor > 1); float32.

  round(len(x) / factor) samples, resampled with the project's resampler (soxr).
  """
  if factor == 1.0 or len(x) < 2:
    return np.asarray(x, np.float32)
  return audio_io.resample(x, 16000 * factor, 16000)


def check_fits(w: WorldConfig, clips: SpeechClips | None = None) -> None:
  """Raises ValueError if `max_objects` names or sounds cannot fit into `audio_seconds`."""
  clips = clips or load_speech_clips(w.sample_rate)
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
                           for b, a in PROMPT_TEMPLATES) + names[0] + gap
      need = max(need, longest_prompt)
    if need > w.num_samples:
      raise ValueError(
          f"WorldConfig: {w.max_objects} spoken names (voice {voice!r}) need {need / sr:.2f} s "
          f"but audio_seconds={w.audio_seconds}; raise audio_seconds or lower max_objects")
  sounds = sorted(SOUND_SECONDS, reverse=True)[:w.max_objects]
  need = sum(sounds) * (1 + SOUND_DURATION_JITTER) * sr + w.max_objects * gap
  if need > w.num_samples:
    raise ValueError(
        f"WorldConfig: {w.max_objects} object sounds need up to {need / sr:.2f} s but "
        f"audio_seconds={w.audio_seconds}; raise audio_seconds or lower max_objects")


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


class SyntheticAVSource:
  """grain RandomAccessDataSource over the synthetic world.

  Splits:
    'train'            endless (len 2**31-1); speech, sound or mixed (P(speech)=speech_prob)
                       captions naming every object; train voices; spoken words are speed
                       perturbed (WorldConfig.speed_perturb).
    'speech_prompted'  fixed set (default 256): one spoken prompt (maybe wrapped in fillers,
                       e.g. "there is a ball") naming one object of the scene; eval voices.
    'sound_prompted'   fixed set (default 256): the sound of one object of the scene.
    'retrieval'        fixed set (default 512) of caption/image pairs (speech by default;
                       modality='sound'/'mixed' gives sound/mixed captions); eval voices.
  Prompt classes cycle through all classes (prompt_class = index % num_classes + 1).
  Evaluation splits never use the training augmentation: their examples do not depend on
  speed_perturb or train_voices.

  Each example (same keys/dtypes for every split):
    image uint8 [S, S, 3]; class_map uint8 [S, S] (0 background, c+1 for CLASS_NAMES[c]);
    audio float32 [L] raw waveform, zero after audio_len; audio_len int32 [];
    source int32 [] (0 speech, 1 sound); prompt_class int32 [] (0 if n/a);
    prompt_start / prompt_end float32 [] seconds (0 if n/a);
    word_classes int32 [W] (class id, 0 for filler words, -1 padding);
    word_times float32 [W, 2] [start, end] seconds (0 padding); index int64 [].
  """

  def __init__(self, split: str, world: WorldConfig | None = None, seed: int = 0,
               modality: str | None = None, num_examples: int | None = None):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    world = world if world is not None else WorldConfig()
    if not isinstance(world, WorldConfig):
      raise TypeError(f"world must be a WorldConfig, got {type(world).__name__}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    defaults = {"train": "mixed", "retrieval": "speech", "speech_prompted": "speech",
                "sound_prompted": "sound"}
    modality = modality or defaults[split]
    if modality not in MODALITIES:
      raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if split.endswith("_prompted") and modality != defaults[split]:
      raise ValueError(f"split {split!r} is {defaults[split]}-only, got modality={modality!r}")
    if split == "train":
      length = TRAIN_LENGTH if num_examples is None else int(num_examples)
    else:
      length = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    if not 1 <= length <= TRAIN_LENGTH:
      raise ValueError(f"num_examples must be in [1, {TRAIN_LENGTH}], got {num_examples}")
    self.split, self.world, self.seed = split, world, int(seed)
    self.modality, self._length = modality, length
    clips = load_speech_clips(world.sample_rate)
    voices = world.train_voices if split == "train" else world.eval_voices
    self._voice_ids = tuple(clips.voice_index(v) for v in voices)
    check_fits(world, clips)

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    return (f"SyntheticAVSource(split={self.split!r}, modality={self.modality!r}, "
            f"seed={self.seed}, len={self._length}, world={self.world!r})")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f"index {index} out of range for {self.split!r} (len {self._length})")
    return make_example(self.world, self.split, self.seed, index, self.modality,
                        self._voice_ids)


def make_example(w: WorldConfig, split: str, seed: int, index: int, modality: str,
                 voice_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Example `index` of `split`: a pure function of its arguments."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))
  clips = load_speech_clips(w.sample_rate)
  n_obj = int(rng.integers(w.min_objects, w.max_objects + 1))
  prompted = split.endswith("_prompted")
  if prompted:
    prompt_class = index % w.num_classes + 1
    others = np.delete(np.arange(1, w.num_classes + 1), prompt_class - 1)
    classes = np.concatenate([[prompt_class], rng.choice(others, n_obj - 1, replace=False)])
    classes = rng.permutation(classes)
  else:
    prompt_class = 0
    classes = rng.choice(w.num_classes, n_obj, replace=False) + 1
  image, class_map = render_scene(rng, w, classes)

  if modality == "mixed":
    is_speech = rng.random() < w.speech_prob
  else:
    is_speech = modality == "speech"
  voice = voice_ids[int(rng.integers(len(voice_ids)))]
  if prompted:
    named = [prompt_class]
  else:
    named = list(rng.permutation(classes))

  if is_speech:
    words, word_cls, droppable = [], [], []
    if prompted and rng.random() < w.prompt_filler_prob:
      before, after = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
    else:
      before, after = (), ()
    for c in named:
      if not prompted and rng.random() < w.filler_prob:
        before = (FILLER_WORDS[int(rng.integers(len(FILLER_WORDS)))],)
      for f in before:
        words.append(f), word_cls.append(0), droppable.append(not prompted)
      words.append(CLASS_NAMES[c - 1]), word_cls.append(int(c)), droppable.append(False)
      before = ()
    for f in after:
      words.append(f), word_cls.append(0), droppable.append(False)
    segments = _speech_words(clips, voice, words)
    if split == "train" and w.speed_perturb != (1.0, 1.0):
      factors = rng.uniform(*w.speed_perturb, len(segments))
      segments = [resample_speed(seg, f) for seg, f in zip(segments, factors)]
  else:
    segments = [synth_sound(int(c), rng, w.sample_rate) for c in named]
    word_cls, droppable = [int(c) for c in named], [False] * len(named)
  audio, audio_len, word_classes, word_times = _layout(rng, w, segments, word_cls, droppable)

  prompt_start = prompt_end = 0.0
  if prompted:
    j = int(np.nonzero(word_classes == prompt_class)[0][0])
    prompt_start, prompt_end = word_times[j]
  return {
      "image": image,
      "class_map": class_map,
      "audio": audio,
      "audio_len": np.int32(audio_len),
      "source": np.int32(0 if is_speech else 1),
      "prompt_class": np.int32(prompt_class),
      "prompt_start": np.float32(prompt_start),
      "prompt_end": np.float32(prompt_end),
      "word_classes": word_classes,
      "word_times": word_times,
      "index": np.int64(index),
  }


def describe(example: dict[str, np.ndarray]) -> str:
  """One line: the objects in the scene and what the caption says (fillers shown as '_')."""
  present = sorted(set(np.unique(example["class_map"]).tolist()) - {0})
  kind = "speech" if int(example["source"]) == 0 else "sound"
  words = []
  for c, (t0, t1) in zip(example["word_classes"], example["word_times"]):
    if c < 0:
      break
    words.append(f"{'_' if c == 0 else CLASS_NAMES[c - 1]}@{t0:.2f}-{t1:.2f}")
  prompt = ""
  if example["prompt_class"] > 0:
    prompt = f" prompt={CLASS_NAMES[example['prompt_class'] - 1]}"
  return (f"#{int(example['index'])} objects={[CLASS_NAMES[c - 1] for c in present]} {kind}: "
          f"{' '.join(words)} (audio_len {int(example['audio_len'])}){prompt}")


# ------------------------------------------------------------------------------------------------
# The registered data source (config -> SyntheticAVSource)
# ------------------------------------------------------------------------------------------------


def world_config(config) -> WorldConfig:
  """The world of a run config: config.data.world plus the model's input geometry."""
  world = dict(config.data.world)
  for key in ("image_size", "sample_rate", "audio_seconds"):
    if key in world:
      raise ValueError(f"config.data.world.{key} is set by config.input (image_size, "
                       "sample_rate, audio_samples): remove it from data.world")
  world.update(image_size=int(config.input.image_size),
               sample_rate=int(config.input.sample_rate),
               audio_seconds=int(config.input.audio_samples) / int(config.input.sample_rate))
  return WorldConfig.from_dict(world)


class SyntheticSource:
  """The synthetic world through the data-source interface of `denseav_jax.data.sources`.

  `read(index, rng)` returns the world's example with the audio cut to its valid length
  (the pipeline pads it back); `rng` is unused, the world being a function of (seed, index).
  The training split is endless and already random, so the pipeline reads it in order.
  """

  name = "synthetic"
  source_label = 0

  def __init__(self, config, split: str, num_examples: int | None = None,
               modality: str | None = None):
    if split == "train":
      modality = config.data.modality
    self.split = split
    self.shuffle = split != "train"
    self.world = SyntheticAVSource(split, world_config(config), seed=config.seed,
                                   modality=modality, num_examples=num_examples)

  def __len__(self) -> int:
    return len(self.world)

  def where(self, index: int) -> str:
    return f"synthetic/{self.split} #{index}"

  def record(self, index: int) -> dict[str, Any]:
    return self.world[index]

  def read(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    del rng
    ex = dict(self.world[index])
    ex["audio"] = ex["audio"][:int(ex["audio_len"])]
    return ex

  def audio(self, index: int) -> np.ndarray:
    ex = self.world[index]
    return ex["audio"][:int(ex["audio_len"])]


# ------------------------------------------------------------------------------------------------
# Preview: `python -m denseav_jax.data.synthetic` prints ms/example, writes /tmp/synthetic_*.
# ------------------------------------------------------------------------------------------------


def _spectrogram_strip(audio: np.ndarray, sr: int, height: int, width: int) -> np.ndarray:
  """Log-magnitude STFT as a uint8 [height, width] strip (low frequencies at the bottom)."""
  win = 512
  hop = max(1, (len(audio) - win) // width)
  frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop][:width]
  mag = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1)).T      # [F, T]
  db = 20 * np.log10(mag + 1e-5)
  db = np.clip((db - db.max() + 70) / 70, 0, 1)
  rows = np.linspace(0, db.shape[0] - 1, height).astype(int)[::-1]
  return (db[rows] * 255).astype(np.uint8)


def _preview(out_dir: str = "/tmp", n: int = 12) -> None:
  import time
  world = WorldConfig()
  sources = {name: SyntheticAVSource(name, world) for name in SPLITS}
  src = sources["train"]
  src[0]
  reps = 200
  t0 = time.perf_counter()
  for i in range(reps):
    src[i]
  ms = (time.perf_counter() - t0) / reps * 1e3
  print(f"train (64 px, 3 s, mixed): {ms:.2f} ms/example over {reps} examples")
  big = SyntheticAVSource("train", dataclasses.replace(world, image_size=224))
  t0 = time.perf_counter()
  for i in range(50):
    big[i]
  print(f"train (224 px, 3 s, mixed): {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms/example")

  from PIL import Image
  examples = [src[i] for i in range(n // 2)] + [sources["speech_prompted"][i] for i in range(3)] \
      + [sources["sound_prompted"][i] for i in range(n - n // 2 - 3)]
  s, scale = world.image_size, 2
  tiles = []
  for ex in examples:
    img = np.repeat(np.repeat(ex["image"], scale, 0), scale, 1)
    cm = ex["class_map"].astype(np.float32) / world.num_classes
    cm_rgb = (np.stack([cm, 1 - cm, (cm > 0) * 0.6], -1) * 255 * (cm > 0)[..., None]).astype(
        np.uint8)
    cm_rgb = np.repeat(np.repeat(cm_rgb, scale, 0), scale, 1)
    top = np.concatenate([img, cm_rgb], 1)
    spec = _spectrogram_strip(ex["audio"], world.sample_rate, 48, top.shape[1])
    tiles.append(np.concatenate([top, np.repeat(spec[..., None], 3, -1)], 0))
  pad = lambda t: np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255)
  cols = 4
  rows = [np.concatenate([pad(t) for t in tiles[r:r + cols]], 1)
          for r in range(0, len(tiles), cols)]
  grid = np.concatenate(rows, 0)
  png = os.path.join(out_dir, "synthetic_preview.png")
  Image.fromarray(grid).save(png)
  txt = os.path.join(out_dir, "synthetic_preview.txt")
  with open(txt, "w") as f:
    for ex in examples:
      f.write(describe(ex) + "\n")
  print(f"wrote {png} (image | class map | spectrogram per example, row-major) and {txt}")
  print(open(txt).read())


if __name__ == "__main__":
  _preview()
