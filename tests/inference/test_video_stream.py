"""predict --video streams (video_io.Frames / AudioStream, video.predict_video): the same
output as the previous implementation, which decoded the whole video into memory first.

`_previous_read_video` and `_previous_predict_video` restate that implementation (the
interleaved decode of every picked frame and the whole sound; the sound resampled at once
and cut into clips; every frame's heat map, then every frame drawn; the sound written as one
array): on short clips the streamed decode gives the same frames and sound, and predict
--video hands the encoder the same frames, pixel for pixel, and the same sound, sample for
sample.
"""

import importlib.util
import math

import numpy as np
import pytest

from denseav_jax.data import audio_io
from denseav_jax.data import transforms as data_transforms
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.inference import predict
from denseav_jax.inference import video
from denseav_jax.inference import video_io
from denseav_jax.models import denseav
from denseav_jax.similarity import heatmap

pytestmark = pytest.mark.skipif(importlib.util.find_spec('av') is None,
                                reason='PyAV is not installed (pip install -e .[video])')

FPS, RATE = 12, 22050


def _previous_read_video(path, max_seconds=None, fps=None):
  """The previous read_video: one interleaved decode, every kept frame in memory."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if container.streams.audio else None
    src_fps = float(vstream.average_rate)
    limit = math.inf if max_seconds is None else float(max_seconds)
    kept, kept_times, pending, times, chunks = [], [], None, [], []
    t0 = audio_t0 = None
    video_done, audio_done = False, astream is None
    for frame in container.decode(*[s for s in (vstream, astream) if s is not None]):
      if isinstance(frame, av.VideoFrame):
        if video_done:
          continue
        t = frame.time
        t0 = t if t0 is None else t0
        t -= t0
        if t >= limit:
          video_done = True
        else:
          times.append(t)
          if fps is None:
            kept.append(frame.to_ndarray(format='rgb24'))
            kept_times.append(t)
          else:
            while pending is not None and len(kept) / fps < t - 1e-9:
              kept.append(pending.to_ndarray(format='rgb24'))
              kept_times.append(len(kept_times) / fps)
            pending = frame
      elif not audio_done:
        audio_t0 = frame.time or 0.0 if audio_t0 is None else audio_t0
        chunks.append(video_io._planar_float(av, frame))  # pylint: disable=protected-access
        if t0 is not None and (frame.time or 0.0) - t0 > limit:
          audio_done = True
      if video_done and audio_done:
        break
    duration = min(times[-1] + 1.0 / src_fps, limit)
    if fps is not None:
      n = max(1, int(math.floor(duration * fps + 0.5 + 1e-9)))
      while len(kept) < n:
        kept.append(kept[-1] if pending is None else pending.to_ndarray(format='rgb24'))
        kept_times.append(len(kept_times) / fps)
        pending = None
      kept, kept_times = kept[:n], kept_times[:n]
    out = video_io.Video(path=path, frames=np.stack(kept), frame_times=np.asarray(kept_times),
                         fps=float(fps or src_fps), duration=float(duration))
    rate = int(astream.rate)
    x = np.concatenate(chunks, axis=1).T
    declared = int(round(float(astream.duration * astream.time_base) * rate))
    if 0 < declared < x.shape[0]:
      x = x[:declared]
    shift = int(round((audio_t0 - t0) * rate))
    x = np.concatenate([np.zeros((shift, x.shape[1]), np.float32), x]) if shift > 0 else x[-shift:]
    if max_seconds is not None:
      x = x[:int(round(max_seconds * rate))]
    out.audio_channels, out.audio, out.sample_rate = x, x[:, 0].copy(), rate
  return out


def _previous_predict_video(model, params, config, path, out_path, fps, max_seconds=None):
  """The previous predict_video: everything decoded, embedded and drawn in memory."""
  vid = _previous_read_video(path, max_seconds, fps)
  sr, length = int(config.input.sample_rate), int(config.input.audio_samples)
  x = audio_io.resample(vid.audio, vid.sample_rate, sr)  # The whole sound at once.
  audio_fn = video._audio_fn(denseav.Arch(model))  # pylint: disable=protected-access
  feats, cls, masks = [], [], []
  for i in range(int(math.ceil(x.shape[0] / length))):
    wav, valid = data_transforms.fit_length(x[i * length:(i + 1) * length], length)
    fe, c, m = audio_fn(params, wav[None], np.array([valid], np.int32))
    feats.append(np.transpose(np.asarray(fe[0]), (1, 0, 2)))
    cls.append(np.repeat(np.asarray(c[0])[None], fe.shape[2], 0))
    masks.append(np.asarray(m[0]))
  steps = feats[0].shape[0]
  timeline, timeline_cls, mask = map(np.concatenate, (feats, cls, masks))
  valid_steps = max(1, min(timeline.shape[0], int(math.ceil(x.shape[0] * steps / length))))
  taps = video.step_taps(vid.frame_times, length / sr / steps, valid_steps)
  frame_fn = video._frame_fn(denseav.Arch(model),  # pylint: disable=protected-access
                             heatmap.Options.from_config(config))
  s, n, heats = int(config.input.image_size), vid.frames.shape[0], []
  for start in range(0, n, video.IMAGE_BATCH):
    idx = np.arange(start, min(start + video.IMAGE_BATCH, n))
    images = np.stack([video._crop(vid.frames[i], s) for i in idx])  # pylint: disable=protected-access
    t = taps[idx]
    if idx.size < video.IMAGE_BATCH:
      pad = video.IMAGE_BATCH - idx.size
      images = np.concatenate([images, np.zeros((pad, s, s, 3), np.uint8)])
      t = np.concatenate([t, np.repeat(t[-1:], pad, axis=0)])
    h = frame_fn(params, images, timeline[t], timeline_cls[t], mask[t].astype(np.float32),
                 video.frame_weights(t, mask))
    heats.append(np.asarray(h)[:idx.size])
  heat = np.concatenate(heats)
  lo, hi = float(heat.min()), float(heat.max())
  scaled = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
  side = video._display_side(*vid.frames.shape[1:3])  # pylint: disable=protected-access
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps[video.CMAP]
  drawn = []
  for i in range(n):
    base = video._crop(vid.frames[i], side).astype(np.float32) / 255.0  # pylint: disable=protected-access
    up = metrics_lib.bilinear_resize(scaled[i][None].astype(np.float32), (side, side))[0]
    rgb = (1.0 - video.ALPHA) * base + video.ALPHA * cmap(np.clip(up, 0.0, 1.0))[..., :3]
    drawn.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
  sound = vid.audio_channels[:int(round(vid.duration * vid.sample_rate))]
  video_io.write_video(out_path, np.stack(drawn), vid.fps, sound, vid.sample_rate)
  return dict(frames=n, heat_min=lo, heat_max=hi, duration=vid.duration, size=side,
              audio_seconds=sound.shape[0] / vid.sample_rate)


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
  """3.5 s at 12 fps (a square moving over noise: lossy, so decoding is tested too) with
  a stereo sound at 22,050 Hz (resampled to the model's 16 kHz in pieces)."""
  path = str(tmp_path_factory.mktemp('stream') / 'in.mp4')
  rng = np.random.default_rng(0)
  n = int(3.5 * FPS)
  frames = rng.integers(0, 80, (n, 60, 84, 3), dtype=np.uint8)
  for i in range(n):
    frames[i, 8:30, 2 * i:2 * i + 20] = (250, 200, 30)
  t = np.arange(int(3.5 * RATE)) / RATE
  sound = np.stack([0.5 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.6),
                    0.2 * rng.standard_normal(t.size)], 1)
  return video_io.write_video(path, frames, FPS, sound, RATE)


@pytest.mark.parametrize('fps, max_seconds', [(None, None), (8, None), (12, 2.0), (30, 1.3),
                                              (5, 0.95), (10, None)])
def test_streamed_frames_and_sound_are_the_previous_decode(clip_file, fps, max_seconds):
  old = _previous_read_video(clip_file, max_seconds, fps)
  frames = video_io.Frames(clip_file, fps=fps, max_seconds=max_seconds)
  got = list(frames)
  assert len(got) == len(old.frames) and frames.count == len(got)
  np.testing.assert_array_equal(np.stack([f for _, f in got]), old.frames)
  np.testing.assert_allclose([t for t, _ in got], old.frame_times, rtol=0, atol=1e-12)
  assert (frames.duration, frames.fps) == (old.duration, old.fps)
  sound = video_io.AudioStream(clip_file, max_seconds=max_seconds)
  pieces = list(sound.chunks())
  assert len(pieces) > 3  # In pieces (an AAC frame each), not all at once.
  np.testing.assert_array_equal(np.concatenate(pieces), old.audio_channels)
  cap = int(round(old.duration * RATE))
  np.testing.assert_array_equal(np.concatenate(list(sound.chunks(max_samples=cap))),
                                old.audio_channels[:cap])
  new = video_io.read_video(clip_file, max_seconds=max_seconds, fps=fps)
  np.testing.assert_array_equal(new.frames, old.frames)
  np.testing.assert_array_equal(new.audio_channels, old.audio_channels)


@pytest.mark.parametrize('fps, max_seconds', [(8, None), (10, 1.7)])
def test_streamed_predict_video_writes_the_previous_video(tiny_model, clip_file, tmp_path,
                                                          monkeypatch, fps, max_seconds):
  """The frames and the sound handed to the encoder are the previous implementation's, to
  the pixel and the sample. (libx264 itself does not encode the same frames to the same
  bytes, nor to the same decoded pixels, from run to run here: on one run the two files'
  frames differed by 2.5 on average. So the written files are compared by what the
  encoder cannot change: shape and frame count.)"""
  handed = []
  real = video_io.write_video

  def capture(path, frames, fps, audio=None, sample_rate=None):
    frames = [np.array(f) for f in frames]
    if audio is not None and not isinstance(audio, np.ndarray):
      audio = np.concatenate(list(audio))
    handed.append((frames, audio, fps, sample_rate))
    return real(path, frames, fps, audio, sample_rate)

  monkeypatch.setattr(video_io, 'write_video', capture)
  model, params, config = predict.load_model(tiny_model['model_dir'])
  before, now = str(tmp_path / 'before.mp4'), str(tmp_path / 'now.mp4')
  want = _previous_predict_video(model, params, config, clip_file, before, fps, max_seconds)
  info = video.predict_video(model, params, config, clip_file, now, fps=fps,
                             max_seconds=max_seconds)
  for key, value in want.items():
    assert info[key] == value, key
  (old_frames, old_audio, *old_rest), (new_frames, new_audio, *new_rest) = handed
  assert len(new_frames) == len(old_frames) == want['frames'] and new_rest == old_rest
  np.testing.assert_array_equal(np.stack(new_frames), np.stack(old_frames))
  np.testing.assert_array_equal(new_audio, old_audio)
  old, new = video_io.Frames(before), video_io.Frames(now)
  old, new = np.stack([f for _, f in old]), np.stack([f for _, f in new])
  assert new.shape == old.shape and new.shape[0] == want['frames']
