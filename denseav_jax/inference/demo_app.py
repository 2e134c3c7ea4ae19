"""The local web demo (`python -m denseav_jax.demo`, docs/demo.md): one model, three tabs.

  image + audio   an image and a sound (uploaded or recorded), optionally the word's time
                  span -> `predict`'s figure: a heat map per head, the heads combined, the
                  activation over time with the masked steps shaded;
  video           a video -> `predict --video`'s heat-map video, with its sound;
  examples        held-out pairs of the built-in synthetic world and a demo video of it,
                  one click each.

Every picture comes from the project's inference code (inference/predict.py,
inference/video.py): the app only reads the uploaded files Gradio hands it (its own
temporary files: nothing is copied elsewhere) and turns a user's mistake into a message on
the page. `Demo` holds the model, loaded once, and the handlers (plain functions of file
paths, tested without a browser as well as in one: tests/inference/test_demo.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from typing import Any

import numpy as np

from denseav_jax import errors
from denseav_jax.inference import predict as predict_lib
from denseav_jax.inference import video as video_lib

MAX_UPLOAD_MB = 50.0
VIDEO_FPS = 10.0
VIDEO_MAX_SECONDS = 20.0
# Below this RMS (float waveform in [-1, 1]) a clip is silence: nothing to ground.
SILENCE_RMS = 1e-4


@dataclasses.dataclass
class Result:
  """A handler's answer: the output (figure array or video path, None on a mistake) and the
  message shown under it."""
  output: Any
  message: str


class Demo:
  """The model (loaded once) and what each tab does with its inputs."""

  def __init__(self, model, params, config, source: str = '',
               max_upload_mb: float = MAX_UPLOAD_MB, video_fps: float = VIDEO_FPS,
               video_max_seconds: float = VIDEO_MAX_SECONDS, out_dir: str | None = None):
    self.model, self.params, self.config, self.source = model, params, config, source
    self.max_upload_mb = float(max_upload_mb)
    self.video_fps, self.video_max_seconds = float(video_fps), float(video_max_seconds)
    # The demo's own outputs (heat-map videos); uploads are only read where Gradio put them.
    self.out_dir = out_dir or tempfile.mkdtemp(prefix='denseav-demo-')
    self.clip_seconds = predict_lib.clip_length(config) / float(config.input.sample_rate)

  # ------------------------------------------------------------------ checks
  def _file(self, path, what: str) -> str:
    if not path:
      raise errors.UserError(f'no {what}: upload one first')
    path = str(path)
    if not os.path.isfile(path):
      raise errors.UserError(f'the {what} upload is gone ({os.path.basename(path)}); upload '
                             'it again')
    mb = os.path.getsize(path) / 2**20
    if mb > self.max_upload_mb:
      raise errors.UserError(f'the {what} {os.path.basename(path)} is {mb:.1f} MB, over the '
                             f'{self.max_upload_mb:g} MB limit (--max_upload_mb)')
    if mb == 0:
      raise errors.UserError(f'the {what} {os.path.basename(path)} is empty')
    return path

  @staticmethod
  def parse_span(text: str | None) -> tuple[float, float] | None:
    """'0.5-1.2' / '0.5 1.2' / '0.5, 1.2' (seconds) -> (start, end); '' -> None."""
    text = (text or '').strip()
    if not text:
      return None
    parts = [p for p in re.split(r'[\s,;]+|(?<=\d)-(?=\d|\.)', text) if p]
    try:
      start, end = (float(p) for p in parts)
    except ValueError:
      raise errors.UserError(f'time span {text!r}: write start and end in seconds, e.g. '
                             '0.5-1.2') from None
    if not 0 <= start < end:
      raise errors.UserError(f'time span {text!r}: need 0 <= start < end (seconds)')
    return start, end

  # ---------------------------------------------------------------- handlers
  def image_audio(self, image_path, audio_path, span: str | None = None) -> Result:
    """`predict`'s figure for an image and a sound; with a span, the word alone: the
    samples between start and end become the clip."""
    try:
      t0 = time.time()
      image = predict_lib.load_image(self._file(image_path, 'image'),
                                     int(self.config.input.image_size))
      audio_file = self._file(audio_path, 'audio')
      notes = []
      rate = int(self.config.input.sample_rate)
      window = self.parse_span(span)
      if window is None:
        audio, audio_len = predict_lib.load_audio(audio_file, self.config)
        total = self._seconds(audio_file)
        if total is not None and total > self.clip_seconds + 1e-3:
          notes.append(f'the sound is {total:.2f} s long: its first {self.clip_seconds:.2f} s '
                       '(the model\'s clip) are used')
      else:
        audio, audio_len = self._span_audio(audio_file, window, rate)
        notes.append(f'the word between {window[0]:.2f} s and {window[1]:.2f} s alone')
      valid = np.asarray(audio[:audio_len], np.float64)
      if audio_len < 1 or float(np.sqrt(np.mean(valid ** 2))) < SILENCE_RMS:
        raise errors.UserError('the sound is silent (or empty): there is nothing to locate; '
                               'upload or record a sound')
      result = predict_lib.predict(self.model, self.params, self.config, image, audio,
                                   audio_len)
      fig = predict_lib.draw_figure(image, result, self.config)
      notes.insert(0, f'score {float(result["score"]):.4f}; {time.time() - t0:.2f} s')
      return Result(fig, '; '.join(notes))
    except errors.DenseAVError as e:
      return Result(None, f'**Cannot show this:** {e}')

  def _seconds(self, path: str) -> float | None:
    """The file's length in seconds, where soundfile can tell."""
    try:
      import soundfile  # pylint: disable=g-import-not-at-top
      info = soundfile.info(path)
      return info.frames / float(info.samplerate)
    except Exception:  # pylint: disable=broad-except
      return None

  def _span_audio(self, path: str, window: tuple[float, float], rate: int):
    """The samples of [start, end) seconds (of the whole file, resampled) as the clip."""
    long_config = self.config.copy_and_resolve_references()
    with long_config.unlocked():
      long_config.input.audio_samples = int(np.ceil(window[1] * rate)) + 1
    audio, audio_len = predict_lib.load_audio(path, long_config)
    start = int(round(window[0] * rate))
    end = min(int(round(window[1] * rate)), int(audio_len))
    if end <= start:
      raise errors.UserError(f'time span {window[0]:g}-{window[1]:g} s lies past the end of '
                             f'the sound ({audio_len / rate:.2f} s)')
    piece = audio[start:end]
    clip = predict_lib.clip_length(self.config)
    out = np.zeros(clip, np.float32)
    n = min(clip, piece.shape[0])
    out[:n] = piece[:n]
    return out, n

  def video(self, video_path) -> Result:
    """`predict --video`'s heat-map video (at most video_max_seconds, video_fps frames/s)."""
    try:
      t0 = time.time()
      path = self._file(video_path, 'video')
      out = os.path.join(self.out_dir, f'heat-{time.time_ns()}.mp4')
      info = video_lib.predict_video(self.model, self.params, self.config, path, out,
                                     fps=self.video_fps, max_seconds=self.video_max_seconds)
      return Result(out, f'{info["frames"]} frames at {info["fps"]:g} frames/s, '
                         f'{info["duration"]:.2f} s; {time.time() - t0:.1f} s')
    except errors.DenseAVError as e:
      return Result(None, f'**Cannot show this:** {e}')


# -------------------------------------------------------------------- examples

def write_examples(config, out_dir: str, pairs: int = 2) -> dict[str, Any]:
  """Held-out pairs of the synthetic world (its retrieval set: eval voices), speech and
  sound, as PNG + WAV files, and a short demo video of it (PyAV): {'pairs': [(name, image,
  audio, caption)], 'video': path or None}."""
  import soundfile  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.synthetic import example  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.synthetic import source  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  world = source.world_config(config)
  rate = int(config.input.sample_rate)
  out = {'pairs': [], 'video': None}
  for modality in ('speech', 'sound'):
    src = source.SyntheticAVSource('retrieval', world, seed=int(config.seed),
                                   modality=modality, num_examples=pairs)
    for i in range(pairs):
      ex = src[i]
      name = f'{modality} {i + 1}'
      img = os.path.join(out_dir, f'{modality}{i}.png')
      wav = os.path.join(out_dir, f'{modality}{i}.wav')
      Image.fromarray(np.asarray(ex['image'], np.uint8)).save(img)
      soundfile.write(wav, np.asarray(ex['audio'], np.float32), rate)
      out['pairs'].append((name, img, wav, example.describe(ex)))
  try:
    path = os.path.join(out_dir, 'demo.mp4')
    synthetic_video(config, path, scenes=3)
    out['video'] = path
  except errors.DenseAVError:
    pass  # No PyAV: the video example is left out (the page says so).
  return out


def synthetic_video(config, out_path: str, scenes: int = 4, modality: str = 'speech',
                    fps: float = 10.0, first: int = 0) -> dict:
  """A demo video of the synthetic world (python -m denseav_jax.tools.demo_video): scenes
  of its retrieval set one after another, each for one model clip while its caption plays.
  Returns its scenes' descriptions and duration. Needs PyAV."""
  from denseav_jax.data.synthetic import example  # pylint: disable=g-import-not-at-top
  from denseav_jax.data.synthetic import source  # pylint: disable=g-import-not-at-top
  from denseav_jax.inference import video_io  # pylint: disable=g-import-not-at-top
  world = source.world_config(config)
  src = source.SyntheticAVSource('retrieval', world, seed=int(config.seed),
                                 modality=modality, num_examples=first + scenes)
  clip = int(config.input.audio_samples)
  frames_per_scene = int(round(clip / int(config.input.sample_rate) * fps))
  up = max(1, 256 // int(config.input.image_size))  # Shown at >= 256 px (nearest).
  frames, audio, lines = [], [], []
  for i in range(first, first + scenes):
    ex = src[i]
    frames += [ex['image'].repeat(up, 0).repeat(up, 1)] * frames_per_scene
    audio.append(np.asarray(ex['audio'], np.float32)[:clip])
    lines.append(example.describe(ex))
  video_io.write_video(out_path, np.stack(frames), fps, np.concatenate(audio),
                       int(config.input.sample_rate))
  return dict(path=out_path, scenes=lines, seconds=len(frames) / fps)


# ------------------------------------------------------------------------ page

def theme():
  """The page's theme (for launch()): system fonts, so the page needs nothing from the
  internet (Gradio's default theme fetches its fonts)."""
  import gradio as gr  # pylint: disable=g-import-not-at-top
  return gr.themes.Default(font=['system-ui', 'sans-serif'], font_mono=['monospace'])


def build(demo: Demo, examples: dict[str, Any] | None = None):
  """The Gradio page (gr.Blocks) over `demo`'s handlers."""
  import gradio as gr  # pylint: disable=g-import-not-at-top

  def as_path(component):
    # The handlers read the uploaded file where Gradio stored it (its temporary files) and
    # decode it themselves, so an unreadable file becomes the handler's message instead of
    # an error inside the component.
    component.preprocess = lambda payload: None if payload is None else str(payload.path)
    return component

  def pair(image, audio, span):
    r = demo.image_audio(image, audio, span)
    return r.output, r.message

  def video(path):
    r = demo.video(path)
    return r.output, r.message

  c = demo.config
  limits = (f'The model\'s clip is {demo.clip_seconds:.2f} s at {c.input.sample_rate} Hz '
            f'(a longer sound: its first {demo.clip_seconds:.2f} s); uploads up to '
            f'{demo.max_upload_mb:g} MB.')
  with gr.Blocks(title='DenseAV-JAX demo') as page:
    gr.Markdown(f'# DenseAV-JAX: what the model hears where\nModel: `{demo.source}`. '
                f'{limits}')
    with gr.Tab('image + audio', id='pair'):
      with gr.Row():
        image_in = as_path(gr.Image(type='filepath', label='image', elem_id='image_in',
                                    sources=['upload']))
        audio_in = as_path(gr.Audio(sources=['upload', 'microphone'], type='filepath',
                                    label='sound (upload or record)', elem_id='audio_in'))
      span_in = gr.Textbox(label='the word\'s time span in seconds (optional), e.g. 0.5-1.2',
                           elem_id='span_in')
      run = gr.Button('Show heat maps', variant='primary', elem_id='pair_run')
      figure = gr.Image(label='heat maps (per head, heads combined) and the activation over '
                        'time', type='numpy', format='png', elem_id='pair_out',
                        interactive=False)
      status = gr.Markdown(elem_id='pair_status')
      run.click(pair, [image_in, audio_in, span_in], [figure, status])
    with gr.Tab('video', id='video'):
      gr.Markdown(f'The heat map of each frame\'s sound over the frame, as `predict --video` '
                  f'draws it: {demo.video_fps:g} frames/s, the first '
                  f'{demo.video_max_seconds:g} s; uploads up to {demo.max_upload_mb:g} MB.')
      video_in = as_path(gr.Video(label='video (with sound)', sources=['upload'],
                                  elem_id='video_in', height=240))
      run_v = gr.Button('Make the heat-map video', variant='primary', elem_id='video_run')
      video_out = gr.Video(label='heat-map video', elem_id='video_out', interactive=False,
                           height=360)
      status_v = gr.Markdown(elem_id='video_status')
      run_v.click(video, [video_in], [video_out, status_v])
    with gr.Tab('examples', id='examples'):
      if not examples:
        gr.Markdown('No examples (they are written at start-up from the synthetic world).')
      else:
        gr.Markdown('Held-out pairs of the built-in synthetic world (voices and sounds the '
                    'model did not train on), one click each.')
        ex_figure = gr.Image(label='heat maps', type='numpy', format='png',
                             elem_id='example_out', interactive=False)
        ex_status = gr.Markdown(elem_id='example_status')
        with gr.Row():
          for i, (name, img, wav, caption) in enumerate(examples['pairs']):
            b = gr.Button(name, elem_id=f'example_{i}')
            b.click(lambda img=img, wav=wav, caption=caption: (
                lambda r: (r.output, f'`{caption}`: {r.message}'))(demo.image_audio(img, wav)),
                    [], [ex_figure, ex_status])
        if examples.get('video'):
          vb = gr.Button('demo video of the synthetic world', elem_id='example_video')
          ex_video = gr.Video(label='heat-map video', elem_id='example_video_out',
                              interactive=False, height=360)
          vb.click(lambda: video(examples['video']), [], [ex_video, ex_status])
        else:
          gr.Markdown('(The demo video needs PyAV: pip install -e ".[video]".)')
  return page
