"""Audio decoding and the project's one resampler (docs/data.md#audio-decoding).

Every audio file the project reads goes through `load` (data sets, `predict`) and every
change of sample rate through `resample`:

  decode(path_or_bytes)            -> float32 [n, channels], rate   (soundfile: wav, flac, ogg, mp3, ...)
  resample(x, rate_in, rate_out)   -> float32                       (soxr, very high quality)
  Resampler(rate_in, rate_out)     .push(chunk) ... .flush()        (the same, in pieces)
  load(path, rate=16000)           -> float32 [n] on the 16-bit grid at `rate`

Decoding uses soundfile, whose wheel bundles libsndfile with its codecs (no system
packages). Like the release, `load` keeps the first channel of a multi-channel file
(`channels='mean'` averages them instead), resamples, and rounds the result to 16-bit
PCM values (`to_pcm16`), the precision the distributed files have: a prepared data set
stores exactly these int16 values, so reading it gives bit-identical audio to reading
the raw files.

Faults raise `errors.BadExample` with a reason: 'missing' (no such file), 'empty' (no
bytes or no samples), 'truncated' (fewer samples than the file's header declares; libsndfile
reads a cut WAV silently, so its own header check is consulted) and 'undecodable'.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

from denseav_jax import errors

SAMPLE_RATE = 16000
CHANNEL_MODES = ('first', 'mean')
# A decoded MP3/OGG may come up a little short of the length its header estimates; below
# this fraction of it the file is taken to be cut off.
_MIN_DECLARED_FRACTION = 0.9
_WAV_DATA_SIZE = re.compile(r'^data\s*:\s*(\d+)\s*\(should be (\d+)\)', re.MULTILINE)
# Streamed WAVs leave these placeholder sizes in the header; they are not truncations.
_WAV_PLACEHOLDER_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def _soundfile():
  try:
    import soundfile  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - soundfile is a dependency.
    raise ImportError('reading audio needs soundfile: pip install soundfile') from e
  return soundfile


def _name(source) -> str:
  return source if isinstance(source, str) else '<bytes>'


def decode(source: str | bytes, *, path: str | None = None) -> tuple[np.ndarray, int]:
  """An audio file (path or its bytes) -> (float32 [n, channels] in [-1, 1], sample rate).

  `path` names the file in errors when `source` is bytes.
  """
  sf = _soundfile()
  name = path or _name(source)
  if isinstance(source, str):
    if not os.path.isfile(source):
      raise errors.BadExample('missing', name, 'no such file')
    if os.path.getsize(source) == 0:
      raise errors.BadExample('empty', name, 'the file has 0 bytes')
    handle = source
  else:
    if not source:
      raise errors.BadExample('empty', name, 'no bytes')
    handle = io.BytesIO(source)
  try:
    f = sf.SoundFile(handle)
  except (RuntimeError, ValueError, EOFError, OSError) as e:  # LibsndfileError is a RuntimeError.
    raise errors.BadExample('undecodable', name, str(e).strip().splitlines()[-1]) from None
  with f:
    declared, rate, fmt = f.frames, f.samplerate, f.format
    extra = f.extra_info if fmt == 'WAV' else ''
    try:
      data = f.read(dtype='float32', always_2d=True)
    except (RuntimeError, ValueError, EOFError, OSError) as e:
      # The header was readable: the stream stops (or breaks) before its declared end.
      raise errors.BadExample('truncated', name, 'decoding failed before the '
                              f'{declared} samples the header declares: '
                              f'{str(e).strip().splitlines()[-1]}') from None
  if data.shape[0] == 0:
    raise errors.BadExample('empty', name, 'no audio samples could be decoded')
  if fmt == 'WAV':
    m = _WAV_DATA_SIZE.search(extra)
    if m and int(m.group(1)) not in _WAV_PLACEHOLDER_SIZES and int(m.group(2)) < int(m.group(1)):
      raise errors.BadExample('truncated', name, f'the WAV header declares {m.group(1)} data '
                              f'bytes but the file holds {m.group(2)}')
  elif declared > 0 and data.shape[0] < _MIN_DECLARED_FRACTION * declared:
    raise errors.BadExample('truncated', name, f'decoded {data.shape[0]} of the {declared} '
                            'samples its header declares')
  if not np.all(np.isfinite(data)):
    raise errors.BadExample('undecodable', name, 'decoded samples are not finite')
  return data, int(rate)


def resample(x: np.ndarray, rate_in: int | float, rate_out: int | float) -> np.ndarray:
  """Resamples [n] or [n, channels] audio with soxr ('VHQ'); float32 out.

  Output length round(n * rate_out / rate_in). The one resampler of the project (data sets,
  predict, the synthetic world's speed perturbation and asset rendering).
  """
  x = np.asarray(x, np.float32)
  if x.ndim not in (1, 2):
    raise ValueError(f'resample wants [n] or [n, channels] audio, got shape {x.shape}')
  if not (rate_in > 0 and rate_out > 0):
    raise ValueError(f'sample rates must be positive, got {rate_in} -> {rate_out}')
  if rate_in == rate_out:
    return x.copy()
  if x.shape[0] == 0:
    return x[:0].copy()
  import soxr  # pylint: disable=g-import-not-at-top
  return np.asarray(soxr.resample(x, rate_in, rate_out, quality='VHQ'), np.float32)


class Resampler:
  """`resample` in pieces, for sound too long to hold: `push` chunks of [n] (or
  [n, channels]) audio in order, then `flush`. The outputs, concatenated, are
  resample(whole sound) (the same soxr 'VHQ' stream, cut or zero-padded at the end to its
  length round(n * rate_out / rate_in); tests/data/test_transforms.py checks it)."""

  def __init__(self, rate_in: int | float, rate_out: int | float, channels: int = 1):
    if not (rate_in > 0 and rate_out > 0):
      raise ValueError(f'sample rates must be positive, got {rate_in} -> {rate_out}')
    self.rate_in, self.rate_out, self.channels = rate_in, rate_out, int(channels)
    self._stream = None
    if rate_in != rate_out:
      import soxr  # pylint: disable=g-import-not-at-top
      self._stream = soxr.ResampleStream(rate_in, rate_out, self.channels, dtype='float32',
                                         quality='VHQ')
    self._in = self._out = 0
    self._shape = (0,) if self.channels == 1 else (0, self.channels)

  def _want(self) -> int:
    if self._stream is None:
      return self._in
    return int(round(self._in * self.rate_out / self.rate_in))

  def push(self, x: np.ndarray) -> np.ndarray:
    """The next chunk in -> float32 output so far (shorter or longer than the chunk)."""
    x = np.ascontiguousarray(x, np.float32)
    self._shape = (0,) + x.shape[1:]
    self._in += x.shape[0]
    if self._stream is None:
      y = x.copy()
    elif x.shape[0] == 0:
      y = x[:0].copy()
    else:
      y = np.asarray(self._stream.resample_chunk(x), np.float32)
    y = y[:max(0, self._want() - self._out)]  # Never more than the whole sound's length.
    self._out += y.shape[0]
    return y

  def flush(self) -> np.ndarray:
    """The rest of the output, after the last chunk."""
    y = np.zeros(self._shape, np.float32)
    if self._stream is not None and self._in:
      y = np.asarray(self._stream.resample_chunk(y, last=True), np.float32)
    want = self._want() - self._out
    y = y[:max(0, want)]
    if y.shape[0] < want:
      y = np.concatenate([y, np.zeros((want - y.shape[0],) + y.shape[1:], np.float32)])
    self._out += y.shape[0]
    return y


def to_mono(x: np.ndarray, channels: str = 'first') -> np.ndarray:
  """[n, c] -> [n]: the first channel (the release) or the mean of all channels."""
  if channels not in CHANNEL_MODES:
    raise ValueError(f'audio channels={channels!r}: use one of {CHANNEL_MODES}')
  x = np.asarray(x, np.float32)
  if x.ndim == 1:
    return x
  return x[:, 0].copy() if channels == 'first' else x.mean(axis=1, dtype=np.float32)


def to_pcm16(x: np.ndarray) -> np.ndarray:
  """float audio -> int16 PCM (round to nearest, clipped to the int16 range)."""
  return np.clip(np.rint(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def from_pcm16(x: np.ndarray) -> np.ndarray:
  return np.multiply(np.asarray(x, np.int16), np.float32(1.0 / 32768.0), dtype=np.float32)


def load_pcm16(source: str | bytes, rate: int = SAMPLE_RATE, channels: str = 'first', *,
               path: str | None = None) -> np.ndarray:
  """An audio file -> int16 [n] mono at `rate` (decode, first channel / mean, resample)."""
  data, file_rate = decode(source, path=path)
  mono = resample(to_mono(data, channels), file_rate, rate)
  if mono.shape[0] == 0:
    raise errors.BadExample('empty', path or _name(source),
                            f'{data.shape[0]} samples at {file_rate} Hz resample to none')
  return to_pcm16(mono)


def load(source: str | bytes, rate: int = SAMPLE_RATE, channels: str = 'first', *,
         path: str | None = None) -> np.ndarray:
  """An audio file -> float32 [n] mono at `rate`, on the 16-bit grid (see module doc)."""
  return from_pcm16(load_pcm16(source, rate, channels, path=path))
