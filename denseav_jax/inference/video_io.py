"""Reading and writing video files with PyAV (the `[video]` extra: pip install -e .[video]).

  read_video(path, max_seconds=None, fps=None) -> Video   (frames, their times, the sound)
  Frames(path, fps=None, max_seconds=None)                (the frames one at a time)
  AudioStream(path, max_seconds=None).chunks()            (the sound in [n, C] pieces)
  stream_info(path) -> dict                               (fps, size, has_audio; no decoding)
  write_video(path, frames, fps, audio=None, sample_rate=None)   (frames and sound may be
                                                          iterables: written as they come)

`Frames` and `AudioStream` hold a frame or an audio block at a time, so a video of any
length streams through in bounded memory; `read_video` is them collected into arrays.

PyAV's wheels bundle FFmpeg (libx264, the native AAC encoder, ...), so no system packages
are needed. Timing rules (docs/predict.md#video):

- The picture timeline starts at the first video frame (time 0). A frame is shown from its
  own time until the next frame's; the video lasts until the last frame's time plus one
  frame (1 / fps), or `max_seconds` if that is shorter.
- The sound is aligned to that timeline (cut or zero-padded at the start if its stream
  starts earlier or later), cut to its stream's declared duration (AAC decoders return a
  few padding samples more) and to `max_seconds`. `Video.audio` is its first channel (the
  project's rule, data/audio_io.py); `Video.audio_channels` keeps every channel.
- With `fps`, frame k of the result is the source frame shown at time k / fps, for
  k < round(duration * fps) (at least 1): only those frames are converted.

Written files are H.264 (libx264, yuv420p; FFmpeg's mpeg4 where a build lacks libx264)
with AAC sound, written to a uniquely named temporary file next to `path` (io.atomic_path)
and renamed into place.
"""

import collections
import dataclasses
import fractions
import itertools
import math
import os
from typing import Iterable

import numpy as np

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.data import audio_io

INSTALL_HINT = 'pip install -e .[video] (or pip install av)'
CONTAINERS = ('.mp4', '.m4v', '.mov', '.mkv')  # Hold H.264 / MPEG-4 video with AAC sound.
_AUDIO_BLOCK = 1024  # Samples per encoded audio frame (AAC's frame size).


class VideoError(errors.DenseAVError):
  """A video that cannot be read or written, or PyAV missing (the message says which)."""


def _av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise VideoError(f'reading and writing video needs PyAV, which is not installed: '
                     f'{INSTALL_HINT}') from None
  return av


@dataclasses.dataclass
class Video:
  """A decoded video: frames uint8 [N, H, W, 3] RGB, frame_times float64 [N] seconds,
  fps (of `frames`), duration (seconds), and the sound when the file has some: audio
  float32 [L] (first channel), audio_channels float32 [L, C], sample_rate (Hz)."""
  path: str
  frames: np.ndarray
  frame_times: np.ndarray
  fps: float
  duration: float
  audio: np.ndarray | None = None
  audio_channels: np.ndarray | None = None
  sample_rate: int | None = None

  def require_audio(self) -> tuple[np.ndarray, int]:
    """(audio [L], sample_rate); VideoError naming the file when it has no sound."""
    if self.audio is None or self.audio.size == 0:
      raise VideoError(f'{self.path} has no audio stream (or no decodable sound): this needs '
                       'a video with sound')
    return self.audio, int(self.sample_rate)


def _frame_rate(stream) -> float | None:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate and float(rate) > 0:
      return float(rate)
  return None


def _open(av, path: str):
  """An input container with a video stream; VideoError naming the file otherwise."""
  if not os.path.isfile(path):
    raise VideoError(f'{path} does not exist')
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoError(f'{path} cannot be read as video ({str(e).strip()})') from None
  if not container.streams.video:
    container.close()
    raise VideoError(f'{path} has no video stream')
  return container


def stream_info(path: str) -> dict:
  """What the header says, without decoding: fps (None if unknown), width, height,
  duration (seconds, None if unknown), has_audio. VideoError as read_video."""
  av = _av()
  with _open(av, path) as container:
    v = container.streams.video[0]
    duration = None
    if container.duration is not None:
      duration = container.duration / 1e6  # av.time_base: microseconds.
    return dict(fps=_frame_rate(v), width=v.codec_context.width,
                height=v.codec_context.height, duration=duration,
                has_audio=bool(container.streams.audio))


def _start_time(av, path: str) -> float:
  """The first video frame's time (the picture timeline's 0), decoding only that frame."""
  with _open(av, path) as container:
    vstream = container.streams.video[0]
    try:
      for frame in container.decode(vstream):
        return frame.time if frame.time is not None else 0.0
    except av.FFmpegError:
      pass
  return 0.0


class Frames:
  """A video's frames, decoded one at a time: iterating yields (time, uint8 [H, W, 3] RGB)
  by the module doc's rule (with `fps`, frame k is the source frame shown at k / fps), so
  only a frame or two is held at once; each iteration decodes the file again. After an
  iteration: count (frames yielded), duration, source_fps and fps (of the frames)."""

  def __init__(self, path: str, *, fps: float | None = None,
               max_seconds: float | None = None):
    if max_seconds is not None and not max_seconds > 0:
      raise ValueError(f'max_seconds={max_seconds} must be positive')
    if fps is not None and not fps > 0:
      raise ValueError(f'fps={fps} must be positive')
    self.path, self.max_seconds, self.out_fps = path, max_seconds, fps
    self.count = 0
    self.duration = self.source_fps = self.fps = None

  def __iter__(self):
    av = _av()
    fps, limit = self.out_fps, math.inf if self.max_seconds is None else self.max_seconds
    self.count = 0
    with _open(av, self.path) as container:
      vstream = container.streams.video[0]
      vstream.thread_type = 'AUTO'
      src_fps = _frame_rate(vstream)
      decoded, t0, last_t = 0, None, None
      pending = None  # With `fps`: the last decoded frame's picture, not yet shown.
      ready = collections.deque()  # (time, picture) of frames not yet yielded.
      try:
        for frame in container.decode(vstream):
          t = frame.time if frame.time is not None else decoded / (src_fps or 25.0)
          if t0 is None:
            t0 = t
          t -= t0
          if t >= limit:
            break
          decoded, last_t = decoded + 1, t
          if fps is None:
            ready.append((t, frame.to_ndarray(format='rgb24')))
            known = math.inf
          else:  # The pending picture is shown at every k / fps before this frame's time.
            while pending is not None and (self.count + len(ready)) / fps < t - 1e-9:
              ready.append(((self.count + len(ready)) / fps, pending))
            pending = frame.to_ndarray(format='rgb24')
            # At least this many frames, whatever follows: the duration is >= t.
            known = max(1, int(math.floor(t * fps + 0.5 + 1e-9)))
          while ready and self.count < known:
            self.count += 1
            yield ready.popleft()
      except av.FFmpegError as e:
        if not decoded:
          raise VideoError(f'{self.path} cannot be decoded as video ({str(e).strip()})'
                           ) from None
        # A damaged tail: keep what decoded (as players do).
    if not decoded:
      raise VideoError(f'{self.path} holds no decodable video frames')
    if src_fps is None:
      src_fps = (decoded - 1) / last_t if decoded > 1 and last_t > 0 else 25.0
    self.source_fps = float(src_fps)
    self.duration = float(min(last_t + 1.0 / src_fps, limit))
    self.fps = float(fps or src_fps)
    n = math.inf if fps is None else max(1, int(math.floor(self.duration * fps + 0.5 + 1e-9)))
    while self.count < n and (ready or fps is not None):
      self.count += 1
      yield ready.popleft() if ready else ((self.count - 1) / fps, pending)


class AudioStream:
  """A video's sound, decoded in pieces: `chunks()` yields float32 [n, C] blocks (every
  channel) of the sound aligned to the picture timeline (module doc), cut to `max_seconds`
  and to `max_samples`. rate and channels come from the header (rate None: no sound)."""

  def __init__(self, path: str, *, max_seconds: float | None = None):
    av = _av()
    self.path, self.max_seconds = path, max_seconds
    with _open(av, path) as container:
      astream = container.streams.audio[0] if container.streams.audio else None
      self.rate = int(astream.rate or astream.codec_context.sample_rate) if astream else None
      self.declared = None
      if astream is not None and astream.duration is not None and astream.time_base:
        self.declared = int(round(float(astream.duration * astream.time_base) * self.rate))
    self._t0 = None

  def chunks(self, max_samples: int | None = None):
    """Yields the aligned sound as [n, C] float32 blocks, at most `max_samples` in all."""
    if self.rate is None:
      return
    av = _av()
    if self._t0 is None:
      self._t0 = _start_time(av, self.path)
    cap = math.inf if max_samples is None else max_samples
    if self.max_seconds is not None:
      cap = min(cap, int(round(self.max_seconds * self.rate)))
    raw_cap = self.declared if self.declared and self.declared > 0 else math.inf
    raw = out = 0
    skip = None  # Samples to drop at the start (the sound starts before the picture).
    with _open(av, self.path) as container:
      astream = container.streams.audio[0]
      try:
        for frame in container.decode(astream):
          x = _planar_float(av, frame).T  # [n, C]
          if skip is None:
            shift = int(round(((frame.time or 0.0) - (self._t0 or 0.0)) * self.rate))
            skip = max(0, -shift)
            zeros = min(max(0, shift), cap)
            if zeros:  # The sound starts after the first picture.
              out += zeros
              yield np.zeros((zeros, x.shape[1]), np.float32)
          x = x[:max(0, int(min(raw_cap - raw, x.shape[0])))]
          raw += x.shape[0]
          drop = min(skip, x.shape[0])
          skip -= drop
          x = x[drop:int(min(x.shape[0], drop + cap - out))]
          if x.shape[0]:
            out += x.shape[0]
            yield np.ascontiguousarray(x, np.float32)
          if out >= cap or raw >= raw_cap:
            break
      except av.FFmpegError:
        pass  # A damaged tail: keep what decoded.


def read_video(path: str, *, max_seconds: float | None = None,
               fps: float | None = None) -> Video:
  """Decodes a whole video file (any container and codec FFmpeg reads) into memory; see
  the module doc. For long videos iterate `Frames` and `AudioStream.chunks` instead."""
  _av()
  frames = Frames(path, fps=fps, max_seconds=max_seconds)
  kept = list(frames)
  out = Video(path=path, frames=np.stack([f for _, f in kept]).astype(np.uint8, copy=False),
              frame_times=np.asarray([t for t, _ in kept], np.float64), fps=frames.fps,
              duration=frames.duration)
  del kept
  sound = AudioStream(path, max_seconds=max_seconds)
  pieces = list(sound.chunks())
  if pieces:
    x = np.concatenate(pieces)
    if x.shape[0]:
      out.audio_channels = np.ascontiguousarray(x, np.float32)
      out.audio = audio_io.to_mono(x, 'first')
      out.sample_rate = sound.rate
  return out


def _planar_float(av, frame) -> np.ndarray:
  """An audio frame -> float32 [channels, samples] (any sample format)."""
  if frame.format.name != 'fltp':
    resampler = av.AudioResampler(format='fltp', layout=frame.layout, rate=frame.rate)
    frames = resampler.resample(frame)
    if not frames:
      return np.zeros((len(frame.layout.channels), 0), np.float32)
    return np.concatenate([f.to_ndarray() for f in frames], axis=1).astype(np.float32)
  return frame.to_ndarray().astype(np.float32, copy=False)


def _even(frame: np.ndarray) -> np.ndarray:
  """Pads an odd height / width with a copy of the last row / column (yuv420p needs even
  sizes)."""
  h, w = frame.shape[:2]
  if h % 2 or w % 2:
    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  return frame


def video_encoder() -> str:
  """'libx264' when this FFmpeg build has it, else 'mpeg4'."""
  av = _av()
  try:
    av.Codec('libx264', 'w')
    return 'libx264'
  except Exception:  # pylint: disable=broad-except  # av.codec.codec.UnknownCodecError.
    return 'mpeg4'


def _aac_rate(av, rate: int) -> int:
  """`rate` when AAC supports it, else the smallest supported rate above it (or the
  largest)."""
  rates = sorted(av.Codec('aac', 'w').audio_rates or [rate])
  if rate in rates:
    return rate
  above = [r for r in rates if r > rate]
  return above[0] if above else rates[-1]


def _sound_blocks(audio, channels: int, rate_in: int, rate: int):
  """Sound chunks [n, C] -> [C, <= _AUDIO_BLOCK] planar blocks at `rate` in [-1, 1] (all
  _AUDIO_BLOCK samples long but the last), resampled in pieces when the rates differ."""
  resampler = audio_io.Resampler(rate_in, rate, channels) if rate != rate_in else None
  buf, held = [], 0

  def blocks(pieces, last=False):
    nonlocal buf, held
    for y in pieces:
      if y.shape[0]:
        buf.append(y)
        held += y.shape[0]
    if held < _AUDIO_BLOCK and not (last and held):
      return
    x = np.clip(np.concatenate(buf), -1.0, 1.0)
    full = x.shape[0] if last else x.shape[0] - x.shape[0] % _AUDIO_BLOCK
    for start in range(0, full, _AUDIO_BLOCK):
      yield np.ascontiguousarray(x[start:start + _AUDIO_BLOCK].T)
    buf, held = ([x[full:]], x.shape[0] - full) if full < x.shape[0] else ([], 0)

  for chunk in audio:
    if chunk.ndim != 2 or chunk.shape[1] != channels:
      raise ValueError(f'audio chunks must all be [n, {channels}], got {chunk.shape}')
    yield from blocks([resampler.push(chunk) if resampler else chunk])
  yield from blocks([resampler.flush()] if resampler else [], last=True)


def write_video(path: str, frames: np.ndarray | Iterable[np.ndarray], fps: float,
                audio: np.ndarray | Iterable[np.ndarray] | None = None,
                sample_rate: int | None = None) -> str:
  """Writes frames (uint8 [N, H, W, 3], or an iterable of [H, W, 3]) at `fps`, with
  optional sound (float [L] or [L, C] in [-1, 1] at `sample_rate`, or an iterable of
  [n, C] pieces of it, read after the frames) as AAC (resampled with audio_io.Resampler
  only when AAC does not support the rate). Odd sizes are padded to even. The container
  follows the extension (CONTAINERS); it is written to a uniquely named temporary file
  beside `path`, renamed over it when whole. Returns `path`."""
  av = _av()
  ext = os.path.splitext(path)[1].lower()
  if ext not in CONTAINERS:
    raise VideoError(f'{path}: write video as one of {", ".join(CONTAINERS)}')
  if not fps > 0:
    raise ValueError(f'fps={fps} must be positive')
  if audio is not None:
    if isinstance(audio, (np.ndarray, list, tuple)) or not hasattr(audio, '__iter__'):
      audio = np.asarray(audio, np.float32)
      audio = iter([audio[:, None] if audio.ndim == 1 else audio])
    else:
      audio = iter(audio)
    first = next(audio, None)  # The channel count comes first (the stream's layout).
    first = np.zeros((0, 1), np.float32) if first is None else np.asarray(first, np.float32)
    channels = first.shape[1] if first.ndim == 2 else 0
    if first.ndim != 2 or not 1 <= channels <= 8:
      raise ValueError(f'audio must be [L] or [L, C] with C <= 8, got {first.shape}')
    if not sample_rate or sample_rate <= 0:
      raise ValueError('audio needs its sample_rate')
    rate = _aac_rate(av, int(sample_rate))
    sound = _sound_blocks(itertools.chain([first], (np.asarray(c, np.float32) for c in audio)),
                          channels, int(sample_rate), rate)
  count = 0
  try:
    # Same folder and extension (it picks the container), renamed over `path` when whole.
    with io_lib.atomic_path(path) as tmp, av.open(tmp, 'w') as container:
      vstream = None
      if audio is not None:
        layout = {1: 'mono', 2: 'stereo'}.get(channels, f'{channels}c')
        astream = container.add_stream('aac', rate=rate, layout=layout)
      for frame in frames:
        frame = _even(np.ascontiguousarray(frame, np.uint8))
        if frame.ndim != 3 or frame.shape[-1] != 3:
          raise ValueError(f'frames must be uint8 [H, W, 3], got {frame.shape}')
        if vstream is None:
          vstream = container.add_stream(
              video_encoder(), rate=fractions.Fraction(fps).limit_denominator(10_000))
          vstream.height, vstream.width = frame.shape[:2]
          vstream.pix_fmt = 'yuv420p'
        elif frame.shape[:2] != (vstream.height, vstream.width):
          raise ValueError(f'frame {count} is {frame.shape[:2]}, the first was '
                           f'{(vstream.height, vstream.width)}')
        for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
          container.mux(packet)
        count += 1
      if vstream is None:
        raise ValueError('no frames to write')
      container.mux(vstream.encode())
      if audio is not None:
        start = 0
        for block in sound:
          af = av.AudioFrame.from_ndarray(block, format='fltp', layout=layout)
          af.sample_rate, af.pts = rate, start
          af.time_base = fractions.Fraction(1, rate)
          container.mux(astream.encode(af))
          start += block.shape[1]
        container.mux(astream.encode())
  except av.FFmpegError as e:
    raise VideoError(f'could not write {path} ({str(e).strip()})') from None
  return path
