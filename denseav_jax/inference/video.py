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
  mean over frequency with the heads combined as config.sim.head_agg combines them (sum,
  else max), then the weighted mean over those steps. Taps that all fall on masked steps
  (silence, with sim.vad) give the map 0, as an all-masked example does in evaluation.
- Colours: one min / max over the whole video (so brightness compares across frames; the
  release also clamps negative values to 0 first, which this does not), bilinearly
  upsampled, `jet` at ALPHA over the displayed frame: the same centre crop at the frame's
  own resolution (short side, at most MAX_SIDE pixels, even).
- The written video has the input's sound (all channels, at its rate unless AAC lacks it),
  cut to the video's duration.
"""

import functools
import math

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


def _audio_timeline(model, params, config, audio, rate, channels):
  """Sound [L, C] -> (features [steps, F, C], each step's clip's CLS [steps, C], audio mask
  [steps], valid steps, step seconds, clips)."""
  sr, length = int(config.input.sample_rate), int(config.input.audio_samples)
  x = audio_io.resample(audio_io.to_mono(audio, channels), rate, sr)
  if x.shape[0] == 0:
    raise errors.UserError('the video\'s sound resamples to no samples')
  audio_fn = _audio_fn(denseav.Arch(model))
  n_clips = int(math.ceil(x.shape[0] / length))
  feats, cls, masks = [], [], []
  for i in range(n_clips):
    seg = x[i * length:(i + 1) * length]
    wav, valid = data_transforms.fit_length(seg, length)
    fe, c, m = audio_fn(params, wav[None].astype(np.float32), np.array([valid], np.int32))
    feats.append(np.asarray(fe[0]))  # [F, T, C]
    cls.append(np.asarray(c[0]))
    masks.append(np.asarray(m[0]))
  steps = feats[0].shape[1]
  timeline = np.concatenate([np.transpose(fe, (1, 0, 2)) for fe in feats])  # [n * T, F, C]
  valid_steps = max(1, min(timeline.shape[0], int(math.ceil(x.shape[0] * steps / length))))
  return (timeline, np.repeat(np.stack(cls), steps, axis=0), np.concatenate(masks),
          valid_steps, length / sr / steps, n_clips)


def _display_side(height: int, width: int) -> int:
  side = min(height, width, MAX_SIDE)
  return max(2, side - side % 2)


def _crop(frame: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return data_transforms.eval_image(Image.fromarray(frame), size)


def heat_maps(model, params, config, vid: video_lib.Video, channels: str | None = None
              ) -> tuple[np.ndarray, dict]:
  """Raw (unscaled) heat maps [N, H, W] of a decoded Video's frames (module doc), and
  clips, step_seconds, steps_per_clip, valid_steps."""
  audio_rate = vid.require_audio()[1]
  channels = channels or config.data.audio_channels
  sim = config.sim
  dense.check_options(sim.agg, sim.head_agg, config.model.num_heads, config.model.code_dim)
  timeline, step_cls, step_mask, valid_steps, dt, n_clips = _audio_timeline(
      model, params, config, vid.audio_channels, audio_rate, channels)
  taps = step_taps(vid.frame_times, dt, valid_steps)  # [N, 3]
  weights = frame_weights(taps, step_mask)
  frame_fn = _frame_fn(denseav.Arch(model), heatmap.Options.from_config(config))
  s, n = int(config.input.image_size), vid.frames.shape[0]
  heats = []
  for start in range(0, n, IMAGE_BATCH):
    idx = np.arange(start, min(start + IMAGE_BATCH, n))
    pad = IMAGE_BATCH - idx.size  # A fixed batch: one compilation.
    images = np.stack([_crop(vid.frames[i], s) for i in idx])
    t, w = taps[idx], weights[idx]
    if pad:
      images = np.concatenate([images, np.zeros((pad, s, s, 3), np.uint8)])
      t = np.concatenate([t, np.repeat(t[-1:], pad, axis=0)])
      w = np.concatenate([w, np.repeat(w[-1:], pad, axis=0)])
    h = frame_fn(params, images, timeline[t], step_cls[t], step_mask[t].astype(np.float32), w)
    heats.append(np.asarray(h)[:idx.size])
  info = dict(clips=n_clips, step_seconds=dt, steps_per_clip=timeline.shape[0] // n_clips,
              valid_steps=valid_steps)
  return np.concatenate(heats), info


def render(model, params, config, vid: video_lib.Video, out_path: str,
           channels: str | None = None) -> dict:
  """Heat maps of a decoded Video (read at the output fps) -> out_path; see predict_video."""
  heat, info = heat_maps(model, params, config, vid, channels)  # [N, H, W]
  audio_rate, n = vid.sample_rate, heat.shape[0]
  lo, hi = float(heat.min()), float(heat.max())
  scaled = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
  side = _display_side(*vid.frames.shape[1:3])

  def frames():
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    cmap = colormaps[CMAP]
    for i in range(n):
      base = _crop(vid.frames[i], side).astype(np.float32) / 255.0
      up = metrics_lib.bilinear_resize(scaled[i][None].astype(np.float32), (side, side))[0]
      rgb = (1.0 - ALPHA) * base + ALPHA * cmap(np.clip(up, 0.0, 1.0))[..., :3]
      yield np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

  sound = vid.audio_channels[:int(round(vid.duration * audio_rate))]
  video_lib.write_video(out_path, frames(), vid.fps, sound, audio_rate)
  return dict(out_path=out_path, frames=n, fps=vid.fps, duration=vid.duration, size=side,
              audio_seconds=sound.shape[0] / audio_rate, sample_rate=audio_rate, **info,
              heat_grid=tuple(heat.shape[1:]), heat_min=lo, heat_max=hi)


def predict_video(model, params, config, video_path: str, out_path: str, *,
                  fps: float | None = None, max_seconds: float | None = None,
                  channels: str | None = None) -> dict:
  """Writes out_path (.mp4 / .m4v / .mov / .mkv): the video's frames at `fps` (default:
  min(DEFAULT_FPS, source fps)), up to `max_seconds`, each with the heat map of its own
  sound around its time, and the original sound (module doc). Returns a summary dict:
  out_path, frames, fps, duration, size (written side), audio_seconds, sample_rate, clips,
  step_seconds, steps_per_clip, valid_steps, heat_grid, heat_min / heat_max (the colour
  scale)."""
  info = video_lib.stream_info(video_path)
  vid = video_lib.read_video(video_path, max_seconds=max_seconds,
                             fps=output_fps(info['fps'], fps))
  return render(model, params, config, vid, out_path, channels)
