"""Reading and writing video files with PyAV (the `[video]` extra: pip install -e .[video]).

  read_video(path, max_seconds=None, fps=None) -> Video   (frames, their times, the sound)
  stream_info(path) -> dict                               (fps, size, has_audio; no decoding)
  write_video(path, frames, fps, audio=None, sample_rate=None)

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
  k < round(duration * fps) (at least 1): only those frames are converted and kept.

Written files are H.264 (libx264, yuv420p; FFmpeg's mpeg4 where a build lacks libx264)
with AAC sound, written to a temporary file next to `path` and renamed into place.
"""

import dataclasses
import fractions
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


def read_video(path: str, *, max_seconds: float | None = None,
               fps: float | None = None) -> Video:
  """Decodes a video file (any container and codec FFmpeg reads); see the module doc."""
  av = _av()
  if max_seconds is not None and not max_seconds > 0:
    raise ValueError(f'max_seconds={max_seconds} must be positive')
  if fps is not None and not fps > 0:
    raise ValueError(f'fps={fps} must be positive')
  with _open(av, path) as container:
    vstream = container.streams.video[0]
    vstream.thread_type = 'AUTO'
    astream = container.streams.audio[0] if container.streams.audio else None
    src_fps = _frame_rate(vstream)
    limit = math.inf if max_seconds is None else float(max_seconds)
    kept, kept_times = [], []  # Decoded RGB frames (all, or those picked for `fps`).
    pending = None  # With `fps`: the last decoded frame, not yet converted.
    times, chunks = [], []
    t0 = audio_t0 = None
    video_done, audio_done = False, astream is None
    try:
      for frame in container.decode(*[s for s in (vstream, astream) if s is not None]):
        if isinstance(frame, av.VideoFrame):
          if video_done:
            continue
          t = frame.time if frame.time is not None else len(times) / (src_fps or 25.0)
          if t0 is None:
            t0 = t
          t -= t0
          if t >= limit:
            video_done = True
          else:
            times.append(t)
            if fps is None:
              kept.append(frame.to_ndarray(format='rgb24'))
              kept_times.append(t)
            else:  # The pending frame is shown at every k / fps before this one's time.
              while pending is not None and len(kept) / fps < t - 1e-9:
                kept.append(pending.to_ndarray(format='rgb24'))
                kept_times.append(len(kept_times) / fps)
              pending = frame
        elif not audio_done:
          if audio_t0 is None:
            audio_t0 = frame.time or 0.0
          chunks.append(_planar_float(av, frame))
          if t0 is not None and (frame.time or 0.0) - t0 > limit:
            audio_done = True
        if video_done and audio_done:
          break
    except av.FFmpegError as e:
      if not times:
        raise VideoError(f'{path} cannot be decoded as video ({str(e).strip()})') from None
      # A damaged tail: keep what decoded (as players do).
    if not times:
      raise VideoError(f'{path} holds no decodable video frames')
    if src_fps is None:
      src_fps = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else 25.0
    duration = min(times[-1] + 1.0 / src_fps, limit)
    if fps is not None:
      n = max(1, int(math.floor(duration * fps + 0.5 + 1e-9)))
      while len(kept) < n:
        kept.append(kept[-1] if pending is None else pending.to_ndarray(format='rgb24'))
        kept_times.append(len(kept_times) / fps)
        pending = None
      kept, kept_times = kept[:n], kept_times[:n]
    frames = np.stack(kept).astype(np.uint8, copy=False)
    out = Video(path=path, frames=frames, frame_times=np.asarray(kept_times, np.float64),
                fps=float(fps or src_fps), duration=float(duration))
    if chunks:
      rate = int(astream.rate or astream.codec_context.sample_rate)
      x = np.concatenate(chunks, axis=1).T  # [L, C]
      if astream.duration is not None and astream.time_base is not None:
        declared = int(round(float(astream.duration * astream.time_base) * rate))
        if 0 < declared < x.shape[0]:
          x = x[:declared]
      shift = int(round(((audio_t0 or 0.0) - (t0 or 0.0)) * rate))
      if shift > 0:  # The sound starts after the first picture.
        x = np.concatenate([np.zeros((shift, x.shape[1]), np.float32), x])
      elif shift < 0:
        x = x[-shift:]
      if max_seconds is not None:
        x = x[:int(round(max_seconds * rate))]
      if x.shape[0]:
        out.audio_channels = np.ascontiguousarray(x, np.float32)
        out.audio = audio_io.to_mono(x, 'first')
        out.sample_rate = rate
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


def write_video(path: str, frames: np.ndarray | Iterable[np.ndarray], fps: float,
                audio: np.ndarray | None = None, sample_rate: int | None = None) -> str:
  """Writes frames (uint8 [N, H, W, 3], or an iterable of [H, W, 3]) at `fps`, with
  optional sound (float [L] or [L, C] in [-1, 1] at `sample_rate`) as AAC (resampled with
  audio_io.resample only when AAC does not support the rate). Odd sizes are padded to
  even. The container follows the extension (CONTAINERS). Returns `path`."""
  av = _av()
  ext = os.path.splitext(path)[1].lower()
  if ext not in CONTAINERS:
    raise VideoError(f'{path}: write video as one of {", ".join(CONTAINERS)}')
  if not fps > 0:
    raise ValueError(f'fps={fps} must be positive')
  if audio is not None:
    audio = np.asarray(audio, np.float32)
    audio = audio[:, None] if audio.ndim == 1 else audio
    if audio.ndim != 2 or not 1 <= audio.shape[1] <= 8:
      raise ValueError(f'audio must be [L] or [L, C] with C <= 8, got {audio.shape}')
    if not sample_rate or sample_rate <= 0:
      raise ValueError('audio needs its sample_rate')
    rate = _aac_rate(av, int(sample_rate))
    if rate != sample_rate:
      audio = audio_io.resample(audio, sample_rate, rate)
    audio = np.clip(audio, -1.0, 1.0)
  count = 0
  try:
    # Same folder and extension (it picks the container), renamed over `path` when whole.
    with io_lib.atomic_path(path) as tmp, av.open(tmp, 'w') as container:
      vstream = None
      if audio is not None:
        layout = {1: 'mono', 2: 'stereo'}.get(audio.shape[1], f'{audio.shape[1]}c')
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
        planar = np.ascontiguousarray(audio.T)
        for start in range(0, planar.shape[1], _AUDIO_BLOCK):
          chunk = np.ascontiguousarray(planar[:, start:start + _AUDIO_BLOCK])
          af = av.AudioFrame.from_ndarray(chunk, format='fltp', layout=layout)
          af.sample_rate, af.pts = rate, start
          af.time_base = fractions.Fraction(1, rate)
          container.mux(astream.encode(af))
        container.mux(astream.encode())
  except av.FFmpegError as e:
    raise VideoError(f'could not write {path} ({str(e).strip()})') from None
  return path
