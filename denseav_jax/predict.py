"""Command line: heat maps for an image and a sound, or for a video, from a DenseAV model.

  python -m denseav_jax.predict --checkpoint DIR --image IMG --audio AUDIO --out OUT.png
      [--save-features OUT.npz] [--config configs/FILE.py[:VARIANT]] [--step N]
      [--audio_rate HZ] [--audio_channels first|mean]
  python -m denseav_jax.predict --checkpoint DIR --video IN.mp4 --out OUT.mp4
      [--video_fps FPS] [--max_seconds S]

DIR is a converted / exported model (DIR/params + DIR/config.json, written by
`python -m denseav_jax.convert` or `model_io.save_params`) or a training workdir
(DIR/checkpoints/STEP; the latest step unless --step), resolved by checkpoint/resolve.py.
The config is the config.json found there (training writes one into its workdir);
--config overrides it, and is needed where there is none (the parameters must still fit).

Writes OUT.png (the image, one similarity heat map per head, and the activation over time)
and, with --save-features, an .npz of the features, mask, similarity volume and score; with
--video, a video of the frames with the heat map of the sound around each frame's time.
The heat maps are the ones prompted segmentation scores (similarity/heatmap.py).

The work is done by the library, denseav_jax/inference/predict.py (image + audio, and the
Python API: load_model, load_image, load_audio, predict, draw_figure) and
denseav_jax/inference/video.py (--video); this module parses the flags and turns the
library's errors into one-line messages that name the flag to change.
"""

import contextlib
import os

from absl import flags

from denseav_jax import cli
from denseav_jax import errors
from denseav_jax.checkpoint import resolve
from denseav_jax.evals import figures
from denseav_jax.inference import video
from denseav_jax.inference import video_io
from denseav_jax.inference.predict import (AUDIO_EXTENSIONS, FEATURE_KEYS, clip_length,
                                           draw_figure, load_audio, load_image, load_model,
                                           open_image, predict, save_features)


def define_flags():
  """Registers this CLI's flags (idempotent). Only the command line calls it, so importing
  the module (notebooks, tests) adds no global flags."""
  if 'checkpoint' in flags.FLAGS:
    return
  cli.define_flags(workdir=False)
  flags.DEFINE_string(
      'checkpoint', None, 'A converted model directory (DIR/params + DIR/config.json) or a '
      'training workdir (DIR/checkpoints/STEP; needs --config, the config it was trained '
      'with). --config also overrides a converted model\'s config.json.')
  flags.DEFINE_string(
      'image', None, 'Image file (any format PIL reads; converted to RGB). Its short side is '
      'resized to the model\'s image size (config.input.image_size), then it is '
      'centre-cropped to a square of that size.')
  flags.DEFINE_string(
      'audio', None, 'Audio file: wav, flac, ogg, mp3, aiff or au (any channel count and '
      'rate) or a float array in .npy / .npz (1-D, or 2-D with a channel axis of at most 16; '
      'an .npz holds one array or one named "audio"). The first channel is kept '
      '(--audio_channels), resampled to config.input.sample_rate, then padded or cut to the '
      'model\'s clip length (config.input.audio_samples; only the first clip is used).')
  flags.DEFINE_enum('audio_channels', None, ['first', 'mean'], 'Multi-channel audio: keep the '
                    'first channel (the release) or average them (default: '
                    'config.data.audio_channels).')
  flags.DEFINE_integer(
      'audio_rate', None, 'Sample rate (Hz) of an .npy / .npz --audio (default: the .npz\'s '
      '"sample_rate" entry, else the model\'s config.input.sample_rate). Ignored for audio '
      'files, which carry their rate.')
  flags.DEFINE_string('out', None, 'Output figure (PNG): the image, one similarity heat map '
                      'per head, and the activation over time. With --video: the output '
                      'video (.mp4, .m4v, .mov or .mkv).')
  flags.DEFINE_string(
      'save_features', None, 'Also write an .npz with image_feats [C, H, W], audio_feats '
      '[C, F, T], audio_mask [T] (bool), sim [K, H, W, T] and score.')
  flags.DEFINE_alias('save-features', 'save_features')
  flags.DEFINE_integer('step', None, 'Training-workdir step to load (default: the latest).')
  # Video mode (denseav_jax/inference/video.py, docs/predict.md#video).
  flags.DEFINE_string(
      'video', None, 'Video file (instead of --image / --audio; needs pip install -e .[video]): '
      'writes --out as a video (.mp4, .m4v, .mov or .mkv) of its frames, each with the heat '
      'map of the video\'s own sound around the frame\'s time, and the original sound.')
  flags.DEFINE_float('video_fps', None, 'With --video: frames per second written (default: '
                     'the smaller of 10 and the source\'s frame rate).')
  flags.DEFINE_float('max_seconds', None, 'With --video: only the first S seconds '
                     '(default: all of it).')


def _config_override():
  """The --config flag's config (shared with the other CLIs), or None."""
  return cli.load_config_flag(required=False)


@contextlib.contextmanager
def _flag(name: str):
  """A library errors.UserError inside gets the flag it came from in front."""
  try:
    yield
  except errors.UserError as e:
    raise errors.UserError(f'--{name}: {e}') from None


def _load_model():
  """load_model from --checkpoint, --config and --step; errors name the flag to change."""
  f = flags.FLAGS
  try:
    return load_model(f.checkpoint, _config_override(), f.step)
  except resolve.ResolveError as e:
    if e.argument == 'config':
      raise errors.UserError(f'--config is needed: {e}') from None
    raise errors.UserError(f'--{"step" if e.argument == "step" else "checkpoint"}: {e}'
                           ) from None


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if f.video:  # Video mode: denseav_jax/inference/video.py.
    return _video_main(argv)
  for name in ('checkpoint', 'image', 'audio', 'out'):
    if not f[name].value:
      raise errors.UserError(f'--{name} is required (python -m denseav_jax.predict --checkpoint '
                          'DIR --image IMG --audio AUDIO --out OUT.png)')
  image_path, audio_path = f.image, f.audio
  for name, path in (('image', image_path), ('audio', audio_path)):
    if not os.path.isfile(path):
      raise errors.UserError(f'--{name}={path} does not exist')
  # Check the inputs before the (possibly slow) model load.
  ext = os.path.splitext(audio_path)[1].lower()
  if ext not in AUDIO_EXTENSIONS:
    raise errors.UserError(
        f'--audio={audio_path}: unsupported audio format {ext or "(no extension)"!r}; use one '
        f'of {", ".join(AUDIO_EXTENSIONS)} (convert with e.g. ffmpeg -i IN out.wav)')
  with _flag('image'):
    pil_image = open_image(image_path)
  model, params, config = _load_model()
  with _flag('image'):
    image = load_image(pil_image, config.input.image_size)
  with _flag('audio'):
    audio, audio_len = load_audio(audio_path, config, f.audio_rate, f.audio_channels)
  result = predict(model, params, config, image, audio, audio_len)
  title = f'{os.path.basename(image_path)}  x  {os.path.basename(audio_path)}'
  figures.save_png(draw_figure(image, result, config, title), f.out)
  written = [f.out]
  if f.save_features:
    written.append(save_features(f.save_features, result))
  sr = config.input.sample_rate
  shapes = ' '.join(f'{k} {list(result[k].shape)}' for k in FEATURE_KEYS[:-1])
  print(f'score {float(result["score"]):.6f} ({config.sim.agg}, {config.sim.head_agg}) | '
        f'{shapes} | audio {audio_len / sr:.2f} s of {clip_length(config) / sr:.2f} s | '
        f'wrote {", ".join(written)}', flush=True)


def _video_main(argv):
  """The --video mode (docs/predict.md#video)."""
  del argv
  f = flags.FLAGS
  usage = ('python -m denseav_jax.predict --checkpoint DIR --video IN.mp4 --out OUT.mp4 '
           '[--video_fps FPS] [--max_seconds S]')
  for name in ('checkpoint', 'out'):
    if not f[name].value:
      raise errors.UserError(f'--{name} is required ({usage})')
  for name in ('image', 'audio', 'save_features'):
    if f[name].value:
      raise errors.UserError(f'--{name} cannot be combined with --video ({usage})')
  if os.path.splitext(f.out)[1].lower() not in video_io.CONTAINERS:
    raise errors.UserError(f'--out={f.out}: with --video, write one of '
                        f'{", ".join(video_io.CONTAINERS)}')
  if f.max_seconds is not None and not f.max_seconds > 0:
    raise errors.UserError(f'--max_seconds={f.max_seconds} must be positive')
  # Check the input before the (possibly slow) model load.
  if not os.path.isfile(f.video):
    raise errors.UserError(f'--video={f.video} does not exist')
  info = video_io.stream_info(f.video)
  with _flag('video_fps'):
    fps = video.output_fps(info['fps'], f.video_fps)
  if not info['has_audio']:
    raise errors.UserError(f'--video={f.video} has no audio stream: the heat maps need the '
                        'video\'s own sound')
  model, params, config = _load_model()
  # Streams the video (a batch of frames at a time): memory does not grow with its length.
  r = video.predict_video(model, params, config, f.video, f.out, fps=fps,
                          max_seconds=f.max_seconds, channels=f.audio_channels)
  print(f'video {os.path.basename(f.video)}: {r["frames"]} frames at {r["fps"]:g} fps '
        f'({r["duration"]:.2f} s, {r["size"]}x{r["size"]}) | audio {r["audio_seconds"]:.2f} s '
        f'at {r["sample_rate"]} Hz in {r["clips"]} clip(s), steps of {r["step_seconds"]:.3f} s '
        f'| heat grid {list(r["heat_grid"])} ({config.sim.head_agg}), range '
        f'[{r["heat_min"]:.4f}, {r["heat_max"]:.4f}] | wrote {r["out_path"]}', flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run_main(main)
