"""Video mode of predict: every frame of a video with the heat map of its own sound.

The library behind `python -m denseav_jax.predict --video IN.mp4 --out OUT.mp4`
(denseav_jax/predict.py). Python API:

  model, params, config = predict.load_model(DIR)
  info = predict_video(model, params, config, 'in.mp4', 'out.mp4', fps=10, max_seconds=20)

Needs PyAV (pip install -e .[video]; inference/video_io.py). The rule (docs/predict.md#video),
which follows the release's demo (gradio_app.py + denseav/plotting.py) except where noted:

- Output frames: frame k is the source frame shown at t_k = k / fps, k < round(D * fps),
  D = the video's duration (video_io.read_video). fps: the `fps` argument, default the
  smaller of DEFAULT_FPS and the source's rate.
- Sound: the first channel (`channels` / config.data.audio_channels), resampled to
  config.input.sample_rate, cut into consecutive model clips of config.input.audio_samples
  (the last zero-padded); each clip's features and audio mask are computed once. Their T
  steps per clip, laid end to end, make one timeline of steps of dt = audio_samples /
  sample_rate / T seconds (the release embeds the whole <= 10 s sound at once instead;
  clips let any length through the model's fixed clip).
- Heat map of frame k: predict's and the evaluation's map (similarity/heatmap.py) of the
  frame's image features (resize + centre crop, as predict.load_image) against the
  timeline, with the time weights the audio mask times the release's 3-tap Gaussian
  (TIME_TAPS) on steps g - 1, g, g + 1, g = floor(t_k / dt) (the release's
  int(k / N * steps)) clamped to the last step with sound, edges repeated: per step the
  volume times its audio mask (plus the frame's and that step's clip's CLS term with
  sim.use_cls), the heads combined as config.sim.head_agg combines them (sum, else max),
  the mean over frequency, then the weighted mean over those steps. Taps that all fall on masked steps
  (silence, with sim.vad) give the map 0, as an all-masked example does in evaluation.
- Colours: one min / max over the whole video (so brightness compares across frames; the
  release also clamps negative values to 0 first, which this does not), bilinearly
  upsampled, `jet` at ALPHA over the displayed frame: the same centre crop at the frame's
  own resolution (short side, at most MAX_SIDE pixels, even).
- The written video has the input's sound (all channels, at its rate unless AAC lacks it),
  cut to the video's duration.
- Memory (predict_video): streamed. The sound is decoded, resampled in pieces
  (audio_io.Resampler: the same samples as resampling it whole) and embedded a clip at a
  time; the frames are decoded twice, IMAGE_BATCH at a time for the heat maps, then one at
  a time to be drawn and encoded once the colour scale is known; the sound is copied in
  blocks. Only the timeline's features and one small heat map per frame are kept whole.
  `render` / `heat_maps` work on a decoded Video (video_io.read_video: short clips).
"""

import dataclasses
import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax import errors
from denseav_jax.data import audio_io
from denseav_jax.data import transforms as data_transforms
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.inference import video_io as video_lib
from denseav_jax.models import denseav
from denseav_jax.similarity import dense
from denseav_jax.similarity import heatmap

DEFAULT_FPS = 10.0
IMAGE_BATCH = 8  # Frames per call of the image tower.
MAX_SIDE = 512  # Largest side of the written frames.
ALPHA = 0.5
CMAP = 'jet'
# The release's blur_dim(window=3, std_dev=1): a unit Gaussian sampled at -2, 0, 2 steps.
TIME_TAPS = np.exp(-0.5 * np.array([-2.0, 0.0, 2.0]) ** 2)
TIME_TAPS = (TIME_TAPS / TIME_TAPS.sum()).astype(np.float32)


def output_fps(source_fps: float | None, fps: float | None = None) -> float:
  """`fps` if given, else the smaller of DEFAULT_FPS and the source's rate."""
  if fps is not None:
    if not fps > 0:
      raise errors.UserError(f'fps={fps} must be positive')
    return float(fps)
  return min(DEFAULT_FPS, float(source_fps)) if source_fps else DEFAULT_FPS


def step_taps(frame_times: np.ndarray, step_seconds: float, valid_steps: int) -> np.ndarray:
  """[N] frame times -> [N, 3] timeline steps (g - 1, g, g + 1), g = floor(t / dt), all
  clamped to [0, valid_steps - 1]."""
  g = np.floor(np.asarray(frame_times, np.float64) / step_seconds + 1e-9).astype(np.int64)
  g = np.minimum(g, valid_steps - 1)
  return np.clip(g[:, None] + np.arange(-1, 2)[None], 0, valid_steps - 1)


def frame_weights(taps: np.ndarray, step_mask: np.ndarray) -> np.ndarray:
  """[N, 3] taps (step_taps) and the timeline's audio mask [steps] -> [N, 3] time weights:
  the mask times TIME_TAPS."""
  return (TIME_TAPS[None] * np.asarray(step_mask, np.float32)[taps]).astype(np.float32)


def frame_maps(image, steps, weights, opts: heatmap.Options, mask=None, image_cls=None,
               step_cls=None):
  """The heat map of frames from the audio steps they read (similarity/heatmap.py).

  image [B, H, W, C] (the frames' features), steps [B, n, F, C] (the timeline steps each
  frame reads), weights [B, n] (their time weights), mask [B, n] (those steps' audio mask;
  default weights > 0), and with opts.use_cls image_cls [B, C] and step_cls [B, n, C]
  (each step's clip's audio CLS) -> [B, H, W].
  """
  mask = weights > 0 if mask is None else mask
  vol = heatmap.volume(jnp.swapaxes(steps, 1, 2), image, mask, opts, step_cls,
                       image_cls)  # [B, K, H, W, F, n]
  return heatmap.maps(vol, weights, opts.head_agg)[0]


@functools.cache
def _audio_fn(arch: denseav.Arch):
  """jit of the audio tower on one clip: (features [1, F, T, C], CLS [1, C], mask [1, T])."""
  model = arch.model

  def audio_fn(params, wav, length):
    feats, cls, mask = model.apply({'params': params}, wav, length, method=model.embed_audio)
    return feats.astype(jnp.float32), cls.astype(jnp.float32), mask

  return jax.jit(audio_fn)


@functools.cache
def _frame_fn(arch: denseav.Arch, opts: heatmap.Options):
  """jit of the image tower and frame_maps on a batch of frames."""
  model = arch.model

  def frame_fn(params, images, steps, step_cls, mask, weights):
    img, img_cls = model.apply({'params': params}, images, method=model.embed_image)
    return frame_maps(img.astype(jnp.float32), steps, weights, opts, mask,
                      img_cls.astype(jnp.float32), step_cls)

  return jax.jit(frame_fn)


@dataclasses.dataclass
class Timeline:
  """The sound's audio features, clip after clip: features [steps, F, C], cls [steps, C]
  (each step's clip's CLS), mask [steps] (the audio mask), valid_steps (steps that have
  sound), step_seconds, clips."""
  features: np.ndarray
  cls: np.ndarray
  mask: np.ndarray
  valid_steps: int
  step_seconds: float
  clips: int


def no_sound(path: str) -> video_lib.VideoError:
  return video_lib.VideoError(f'{path} has no audio stream (or no decodable sound): this '
                              'needs a video with sound')


def audio_timeline(model, params, config, chunks: Iterable[np.ndarray], rate: int,
                   channels: str | None = None, path: str = 'the video') -> Timeline:
  """Sound pieces [n, C] at `rate` -> its Timeline (module doc): resampled in pieces, each
  model clip embedded once its samples are in, so only a clip of sound is held."""
  sr, length = int(config.input.sample_rate), int(config.input.audio_samples)
  channels = channels or config.data.audio_channels
  audio_fn = _audio_fn(denseav.Arch(model))
  resampler = audio_io.Resampler(rate, sr)
  feats, cls, masks = [], [], []
  pending, held, total, raw = [], 0, 0, 0

  def embed(seg):
    wav, valid = data_transforms.fit_length(seg, length)
    fe, c, m = audio_fn(params, wav[None].astype(np.float32), np.array([valid], np.int32))
    feats.append(np.transpose(np.asarray(fe[0]), (1, 0, 2)))  # [T, F, C]
    cls.append(np.asarray(c[0]))
    masks.append(np.asarray(m[0]))

  def take(y, last=False):
    nonlocal pending, held, total
    if y.shape[0]:
      pending.append(y)
      held += y.shape[0]
      total += y.shape[0]
    while held >= length or (last and held):
      x = np.concatenate(pending)
      embed(x[:length])
      pending, held = [x[length:]], max(0, x.shape[0] - length)

  for chunk in chunks:
    raw += chunk.shape[0]
    take(resampler.push(audio_io.to_mono(chunk, channels)))
  if not raw:
    raise no_sound(path)
  take(resampler.flush(), last=True)
  if not total:
    raise errors.UserError('the video\'s sound resamples to no samples')
  steps = feats[0].shape[0]
  timeline = np.concatenate(feats)  # [clips * T, F, C]
  valid_steps = max(1, min(timeline.shape[0], int(math.ceil(total * steps / length))))
  return Timeline(timeline, np.repeat(np.stack(cls), steps, axis=0), np.concatenate(masks),
                  valid_steps, length / sr / steps, len(feats))


def _display_side(height: int, width: int) -> int:
  side = min(height, width, MAX_SIDE)
  return max(2, side - side % 2)


def _crop(frame: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return data_transforms.eval_image(Image.fromarray(frame), size)


def frame_heats(model, params, config, frames: Iterable[tuple[float, np.ndarray]],
                timeline: Timeline) -> np.ndarray:
  """Raw (unscaled) heat maps [N, H, W] of (time, uint8 [h, w, 3] frame) pairs against the
  Timeline, IMAGE_BATCH frames at a time (only those are held)."""
  frame_fn = _frame_fn(denseav.Arch(model), heatmap.Options.from_config(config))
  s = int(config.input.image_size)
  heats = []

  def run(batch):
    times = np.array([t for t, _ in batch], np.float64)
    taps = step_taps(times, timeline.step_seconds, timeline.valid_steps)  # [n, 3]
    images = np.stack([_crop(f, s) for _, f in batch])
    pad = IMAGE_BATCH - len(batch)  # A fixed batch: one compilation.
    if pad:
      images = np.concatenate([images, np.zeros((pad, s, s, 3), np.uint8)])
      taps = np.concatenate([taps, np.repeat(taps[-1:], pad, axis=0)])
    h = frame_fn(params, images, timeline.features[taps], timeline.cls[taps],
                 timeline.mask[taps].astype(np.float32), frame_weights(taps, timeline.mask))
    heats.append(np.asarray(h)[:len(batch)])

  batch = []
  for item in frames:
    batch.append(item)
    if len(batch) == IMAGE_BATCH:
      run(batch)
      batch = []
  if batch:
    run(batch)
  return np.concatenate(heats)


def _check(config):
  sim = config.sim
  dense.check_options(sim.agg, sim.head_agg, config.model.num_heads, config.model.code_dim)


def heat_maps(model, params, config, vid: video_lib.Video, channels: str | None = None
              ) -> tuple[np.ndarray, dict]:
  """Raw (unscaled) heat maps [N, H, W] of a decoded Video's frames (module doc), and
  clips, step_seconds, steps_per_clip, valid_steps."""
  audio_rate = vid.require_audio()[1]
  _check(config)
  timeline = audio_timeline(model, params, config, [vid.audio_channels], audio_rate,
                            channels, vid.path)
  heat = frame_heats(model, params, config, zip(vid.frame_times, vid.frames), timeline)
  return heat, _timeline_info(timeline)


def _timeline_info(timeline: Timeline) -> dict:
  return dict(clips=timeline.clips, step_seconds=timeline.step_seconds,
              steps_per_clip=timeline.features.shape[0] // timeline.clips,
              valid_steps=timeline.valid_steps)


def _write(out_path, heat, frames, fps, sound, audio_rate) -> dict:
  """Draws each frame of `frames` ((time, picture) pairs, as many as heat's) with its map on
  one colour scale, and writes them with `sound` ([n, C] pieces) to out_path."""
  n = heat.shape[0]
  lo, hi = float(heat.min()), float(heat.max())
  scaled = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
  drawn = dict(side=None, samples=0)

  def pictures():
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    cmap = colormaps[CMAP]
    for i, (_, frame) in zip(range(n), frames):
      if drawn['side'] is None:
        drawn['side'] = _display_side(*frame.shape[:2])
      side = drawn['side']
      base = _crop(frame, side).astype(np.float32) / 255.0
      up = metrics_lib.bilinear_resize(scaled[i][None].astype(np.float32), (side, side))[0]
      rgb = (1.0 - ALPHA) * base + ALPHA * cmap(np.clip(up, 0.0, 1.0))[..., :3]
      yield np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

  def counted():
    for chunk in sound:
      drawn['samples'] += chunk.shape[0]
      yield chunk

  video_lib.write_video(out_path, pictures(), fps, counted(), audio_rate)
  return dict(out_path=out_path, frames=n, fps=fps, size=drawn['side'],
              audio_seconds=drawn['samples'] / audio_rate, sample_rate=audio_rate,
              heat_grid=tuple(heat.shape[1:]), heat_min=lo, heat_max=hi)


def render(model, params, config, vid: video_lib.Video, out_path: str,
           channels: str | None = None) -> dict:
  """Heat maps of a decoded Video (read at the output fps) -> out_path; see predict_video."""
  heat, info = heat_maps(model, params, config, vid, channels)  # [N, H, W]
  rate = vid.sample_rate
  sound = vid.audio_channels[:int(round(vid.duration * rate))]
  out = _write(out_path, heat, zip(vid.frame_times, vid.frames), vid.fps, [sound], rate)
  return dict(out, duration=vid.duration, **info)


def predict_video(model, params, config, video_path: str, out_path: str, *,
                  fps: float | None = None, max_seconds: float | None = None,
                  channels: str | None = None) -> dict:
  """Writes out_path (.mp4 / .m4v / .mov / .mkv): the video's frames at `fps` (default:
  min(DEFAULT_FPS, source fps)), up to `max_seconds`, each with the heat map of its own
  sound around its time, and the original sound (module doc). Streams: the sound is read
  and embedded a clip at a time, then the frames are decoded twice (their heat maps, then
  the drawn video, once the colour scale is known), a batch at a time, so memory does not
  grow with the video's length beyond the timeline's features and the small heat maps.
  Returns a summary dict: out_path, frames, fps, duration, size (written side),
  audio_seconds, sample_rate, clips, step_seconds, steps_per_clip, valid_steps, heat_grid,
  heat_min / heat_max (the colour scale)."""
  info = video_lib.stream_info(video_path)
  fps = output_fps(info['fps'], fps)
  _check(config)
  sound = video_lib.AudioStream(video_path, max_seconds=max_seconds)
  if sound.rate is None:
    raise no_sound(video_path)
  timeline = audio_timeline(model, params, config, sound.chunks(), sound.rate, channels,
                            video_path)
  frames = video_lib.Frames(video_path, fps=fps, max_seconds=max_seconds)
  heat = frame_heats(model, params, config, frames, timeline)
  samples = int(round(frames.duration * sound.rate))
  out = _write(out_path, heat, video_lib.Frames(video_path, fps=fps, max_seconds=max_seconds),
               frames.fps, sound.chunks(max_samples=samples), sound.rate)
  return dict(out, duration=frames.duration, **_timeline_info(timeline))
