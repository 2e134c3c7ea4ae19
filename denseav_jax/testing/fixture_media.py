"""The files behind the data-set fixtures (testing/fixtures.py): deterministic random
generators, speech-like and sound-like audio, natural-looking images, and each kind of
planted fault (missing, empty, truncated or undecodable files) written the way a damaged
real copy would have it."""

from __future__ import annotations

import io
import os
import shutil
import zlib
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

MARKER = ".denseav_fixture"  # A generator only overwrites folders that carry this file.


def rng(seed: int, *keys: Any) -> np.random.Generator:
  ints = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
  return np.random.default_rng(ints)


def fault_plan(faults, default, allowed) -> list[str]:
  if faults is True:
    kinds = list(default)
  elif not faults:
    kinds = []
  elif isinstance(faults, str):
    kinds = [faults]
  elif isinstance(faults, dict):
    kinds = [k for k, n in faults.items() for _ in range(int(n))]
  else:
    kinds = list(faults)
  unknown = sorted(set(kinds) - set(allowed))
  if unknown:
    raise ValueError(f"unknown fault kinds {unknown}; allowed: {sorted(allowed)}")
  return kinds


def layout(rng, num_ok: int, kinds: list[str]) -> list[str]:
  """File order of 'ok' and fault statuses: faults scattered among the OK rows."""
  slots = ["ok"] * num_ok + list(kinds)
  return [slots[i] for i in rng.permutation(len(slots))]


def prepare(path: str) -> None:
  if os.path.exists(path):
    if not os.path.exists(os.path.join(path, MARKER)):
      raise FileExistsError(f"{path} exists and was not written by fixtures.py; not touching it")
    shutil.rmtree(path)
  os.makedirs(path)
  with open(os.path.join(path, MARKER), "w") as f:
    f.write("written by denseav_jax.testing.fixtures\n")


def write_bytes(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def garbage(rng, n: int) -> bytes:
  # No 0xFF byte, so no MPEG sync word: mpg123 cannot "resync" into random bytes.
  return rng.integers(0, 255, size=n, dtype=np.uint8).tobytes()


def write_audio(path: str, x: np.ndarray, sr: int, fmt: str) -> np.ndarray:
  """Writes float [n, c] audio; returns what a float32 decode of the file gives."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if fmt in ("wav", "flac"):
    q = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(path, q, sr, format=fmt.upper(), subtype="PCM_16")
    return q.astype(np.float32) / 32768.0
  if fmt == "mp3":
    sf.write(path, x.astype(np.float32), sr, format="MP3")
  elif fmt == "ogg":
    sf.write(path, x.astype(np.float32), sr, format="OGG", subtype="VORBIS")
  else:
    raise ValueError(fmt)
  return sf.read(path, dtype="float32", always_2d=True)[0]


def emit_audio(path, x, sr, fmt, status, rng):
  """Writes the audio file as `status` wants it; returns (truth or None, sample_rate, detail)."""
  if status == "missing_audio":
    return None, 0, "file absent"
  if status == "empty_audio":
    write_bytes(path, b"")
    return None, 0, "0-byte file"
  if status == "bad_audio":
    write_bytes(path, garbage(rng, int(rng.integers(2000, 6000))))
    return None, 0, "random bytes"
  truth = write_audio(path, x, sr, fmt)
  if status == "truncated_audio":
    with open(path, "rb") as f:
      data = f.read()
    write_bytes(path, data[:int(len(data) * 0.4)])
    return None, sr, f"{fmt} cut to 40% of {len(data)} bytes"
  return truth, sr, ""


def jpeg(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def emit_image(path, img, status, rng, bad_variant=0):
  """Writes a JPEG as `status` wants it; returns (decoded RGB truth or None, detail)."""
  if status in ("missing_image", "missing_frame"):
    return None, "file absent"
  data = jpeg(img)
  if status == "bad_image":
    if bad_variant % 2 == 0:
      write_bytes(path, data[:int(len(data) * 0.3)])
      return None, "jpeg cut to 30%"
    write_bytes(path, garbage(rng, int(rng.integers(1000, 4000))))
    return None, "random bytes"
  write_bytes(path, data)
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), ""


def natural_image(rng, w: int, h: int, gray: bool = False) -> Image.Image:
  """A smooth random colour field with a few shapes and mild noise."""
  gh, gw = rng.integers(3, 7, size=2)
  field = rng.uniform(30, 225, size=(gh, gw, 3)).astype(np.uint8)
  img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(2, 5))):
    x0, x1 = np.sort(rng.uniform(-0.1, 1.1, 2)) * w
    y0, y1 = np.sort(rng.uniform(-0.1, 1.1, 2)) * h
    col = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = rng.integers(3)
    if shape == 0:
      draw.ellipse([x0, y0, x1, y1], fill=col)
    elif shape == 1:
      draw.rectangle([x0, y0, x1, y1], fill=col)
    else:
      draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=col)
  arr = np.asarray(img, np.int16) + rng.integers(-8, 9, size=(h, w, 3), dtype=np.int16)
  img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
  return img.convert("L") if gray else img


def syllable(rng, n: int, sr: int, f0: float) -> np.ndarray:
  """A harmonic tone with a pitch glide, formant-shaped harmonics and a rise/fall envelope."""
  u = np.linspace(0.0, 1.0, n)
  f = f0 * rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(-0.12, 0.12) * (2 * u - 1))
  phase = (2 * np.pi * np.cumsum(f) / sr).astype(np.float32)
  k = np.arange(1, max(2, min(14, int(0.45 * sr / f.max()))) + 1)
  f1, f2 = rng.uniform(300, 850), rng.uniform(900, 2500)
  hz = k * f.mean()
  amp = np.exp(-((hz - f1) / 180) ** 2) + 0.7 * np.exp(-((hz - f2) / 300) ** 2) + 0.1 / k
  harmonics = np.sin(phase[:, None] * k.astype(np.float32))  # float32: twice as fast
  return (harmonics @ amp.astype(np.float32)) * (u ** 0.6 * (1 - u) ** 1.4)


def speech(rng, sr: int, seconds: float, words, fixed: bool = False):
  """Speech-like audio [n]: words (drawn from `words`, or exactly `words` if fixed) as bursts of
  1-3 syllables separated by silence.  Returns (audio, words, starts, ends) in seconds."""
  n = max(1, int(round(seconds * sr)))
  x = rng.normal(0.0, 0.002, n)
  f0 = rng.uniform(95, 230)
  t = min(rng.uniform(0.08, 0.4), 0.15 * seconds)
  said, starts, ends = [], [], []
  while not fixed or len(said) < len(words):
    word = words[len(said)] if fixed else words[int(rng.integers(len(words)))]
    durs = rng.uniform(0.12, 0.24, size=1 + min(2, len(word) // 4))
    if t + durs.sum() > seconds - 0.03:
      break
    start = t
    for d in durs:
      a, m = int(t * sr), int(d * sr)
      x[a:a + m] += syllable(rng, m, sr, f0) * rng.uniform(0.6, 1.0)
      t += d
    said.append(word)
    starts.append(round(start, 3))
    ends.append(round(t, 3))
    t += rng.uniform(0.05, 0.35)
  if not said:  # clip too short for a whole word: one syllable filling its middle
    a, m = int(0.1 * n), int(0.8 * n)
    x[a:a + m] += syllable(rng, m, sr, f0)
    said, starts, ends = [words[-1] if fixed else words[0]], [round(a / sr, 3)], [
        round((a + m) / sr, 3)]
  x *= rng.uniform(0.5, 0.8) / max(np.abs(x).max(), 1e-9)
  return x, said, starts, ends


def sound(rng, sr: int, seconds: float, channels: int) -> np.ndarray:
  """Coloured noise plus amplitude-modulated tones, a different mix per channel: [n, c]."""
  n = max(2, int(round(seconds * sr)))
  nfft = 1 << (n - 1).bit_length()  # power-of-two FFT: odd lengths are many times slower
  t = (np.arange(n) / sr).astype(np.float32)
  freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
  out = np.empty((n, channels), np.float32)
  for c in range(channels):
    spec = np.fft.rfft(rng.standard_normal(nfft)) / np.maximum(freqs, 20.0) ** rng.uniform(0.3, 1.2)
    noise = np.fft.irfft(spec, nfft)[:n]
    noise /= np.abs(noise).max() + 1e-9
    k = int(rng.integers(1, 4))
    f, rate = rng.uniform(120, 3000, k).astype(np.float32), rng.uniform(0.5, 6.0, k)
    am = 0.5 + 0.5 * np.sin(2 * np.pi * t[:, None] * rate.astype(np.float32)
                            + rng.uniform(0, 6.3, k).astype(np.float32))
    tones = np.sin((2 * np.pi) * t[:, None] * f) * am @ rng.uniform(0.2, 1.0, k).astype(np.float32)
    out[:, c] = rng.uniform(0.2, 1.0) * noise + tones
  return out * (rng.uniform(0.5, 0.8) / max(np.abs(out).max(), 1e-9))


def abs(root: str) -> str:
  os.makedirs(root, exist_ok=True)
  return os.path.abspath(root)
