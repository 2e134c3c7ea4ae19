"""Renders the spoken words of the synthetic world once, with espeak-ng, into a small asset.

Run ``python -m denseav_jax.tools.make_speech_clips`` (needs ``espeak-ng`` on PATH) to (re)write
``denseav_jax/data/assets/speech_clips.npz``. Users and tests never need espeak: they only read
the committed asset through ``denseav_jax.data.synthetic.speech.load_speech_clips``.

Asset layout (all plain arrays, no pickles):
  audio        int16 [N]       every clip, concatenated (16 kHz, trimmed of silence, peak 0.8)
  offsets      int64 [V*W+1]   clip k = v*W + w spans audio[offsets[k]:offsets[k+1]]
  words        str   [W]       class names first, then filler words
  voices       str   [V]       espeak voice[+variant] names (one rendering setting per voice)
  voice_speed  int32 [V]       espeak -s (words per minute)
  voice_pitch  int32 [V]       espeak -p (0-99)
  sample_rate  int64 []        16000
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from absl import flags
import numpy as np

from denseav_jax import cli
from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.data import audio_io

SAMPLE_RATE = 16000

# Must start with synthetic.world.CLASS_NAMES in the same order (checked when the world loads).
CLASS_WORDS = ("ball", "box", "tent", "star", "ring", "cross", "moon", "kite", "drum", "leaf")
FILLER_WORDS = ("the", "a", "and", "with", "there", "is")

# (espeak voice[+variant], speed wpm, pitch 0-99). The name is passed verbatim to `espeak-ng -v`
# and is also the voice's name in the asset. The first twelve are training voices: several English
# accents, male/female/klatt variants (`espeak-ng --voices=variant`), spread over speeds 135-200
# and pitches 28-80. The last, en-029 (Caribbean), is the held-out evaluation voice: no training
# voice uses its accent. Keep the first four and en-029 unchanged (existing configs name them).
TRAIN_VOICES = (
    ("en-us", 160, 45),
    ("en-gb", 175, 62),
    ("en-gb-scotland", 145, 32),
    ("en-gb-x-rp", 185, 75),
    ("en-us+f2", 150, 60),
    ("en-gb+f3", 190, 50),
    ("en-gb-x-rp+m3", 135, 30),
    ("en-gb-x-gbclan", 170, 40),
    ("en-gb-x-gbcwmd+f4", 140, 68),
    ("en-us-nyc+m7", 200, 28),
    ("en-gb-scotland+f5", 165, 80),
    ("en-us+klatt2", 180, 55),
)
EVAL_VOICES = (
    ("en-029", 155, 55),
)
VOICES = TRAIN_VOICES + EVAL_VOICES

# The committed asset that data.synthetic.speech reads (package data of denseav_jax.data).
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "assets", "speech_clips.npz")


def trim_silence(x: np.ndarray, rate: int, rel_db: float = -32.0,
                 margin_s: float = 0.01) -> np.ndarray:
  """Cuts leading/trailing frames whose RMS is `rel_db` below the loudest frame."""
  frame = int(rate * 0.005)
  n = len(x) // frame
  rms = np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
  active = np.nonzero(rms > rms.max() * 10 ** (rel_db / 20))[0]
  margin = int(rate * margin_s)
  start = max(0, active[0] * frame - margin)
  end = min(len(x), (active[-1] + 1) * frame + margin)
  y = x[start:end].copy()
  fade = min(int(rate * 0.004), len(y) // 4)
  ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
  y[:fade] *= ramp
  y[len(y) - fade:] *= ramp[::-1]
  return y


def render_word(word: str, voice: str, speed: int, pitch: int, tmpdir: str) -> np.ndarray:
  """One espeak-ng rendering, as float64 in [-1, 1] at SAMPLE_RATE, trimmed and peak-normalised."""
  path = os.path.join(tmpdir, "w.wav")
  subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, word],
                 check=True, capture_output=True)
  data, rate = audio_io.decode(path)
  x = audio_io.resample(data[:, 0], rate, SAMPLE_RATE).astype(np.float64)
  x = trim_silence(x, SAMPLE_RATE)
  return x * (0.8 / max(np.abs(x).max(), 1e-6))


def define_flags() -> None:
  flags.DEFINE_string("out", DEFAULT_OUT, "where to write the npz")


def main(argv) -> None:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  if shutil.which("espeak-ng") is None:
    raise errors.UserError("espeak-ng not found on PATH; install it (apt-get install espeak-ng) "
                           "to re-render the clips. The committed asset works without it.")
  words = CLASS_WORDS + FILLER_WORDS
  clips = []
  with tempfile.TemporaryDirectory() as tmpdir:
    for voice, speed, pitch in VOICES:
      for word in words:
        clips.append(render_word(word, voice, speed, pitch, tmpdir))
  lengths = np.array([len(c) for c in clips])
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  audio = np.round(np.concatenate(clips) * 32767).astype(np.int16)
  with io_lib.atomic_path(args.out) as tmp, open(tmp, 'wb') as f:  # Renamed when whole.
    np.savez_compressed(
        f, audio=audio, offsets=offsets, words=np.array(words),
        voices=np.array([v for v, _, _ in VOICES]),
        voice_speed=np.array([s for _, s, _ in VOICES], np.int32),
        voice_pitch=np.array([p for _, _, p in VOICES], np.int32),
        sample_rate=np.int64(SAMPLE_RATE))
  dur = lengths / SAMPLE_RATE
  print(f"wrote {args.out}: {len(clips)} clips ({len(VOICES)} voices x {len(words)} words), "
        f"{os.path.getsize(args.out) / 1e6:.2f} MB, word length {dur.min():.2f}-{dur.max():.2f} s "
        f"(mean {dur.mean():.2f} s)")
  for vi, (voice, _, _) in enumerate(VOICES):
    d = dur[vi * len(words):(vi + 1) * len(words)]
    print(f"  {voice:16s} " + " ".join(f"{w}:{t:.2f}" for w, t in zip(words, d)))


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
