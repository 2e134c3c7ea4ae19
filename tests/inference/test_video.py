"""denseav_jax.inference.video_io (PyAV), predict's --video mode (predict_video) and evals.pca."""

import importlib.util
import math
import os
import sys

from absl import flags
import numpy as np
import pytest

from conftest import load_config
from denseav_jax import errors
from denseav_jax import predict as predict_cli
from denseav_jax.inference import predict
from denseav_jax.inference import video
from denseav_jax.inference import video_io
from denseav_jax.data import audio_io
from denseav_jax.data import transforms as data_transforms
from denseav_jax.evals import pca

needs_av = pytest.mark.skipif(importlib.util.find_spec('av') is None,
                              reason='PyAV is not installed (pip install -e .[video])')

FPS, RATE, SECONDS = 12, 22050, 2.5


def _clip(width=64, height=48, fps=FPS, seconds=SECONDS):
  """A light square moving right over a dark background; 440 Hz left, 1320 Hz right."""
  n = int(round(fps * seconds))
  frames = np.full((n, height, width, 3), 40, np.uint8)
  for i in range(n):
    frames[i, 10:26, 2 * i:2 * i + 16] = (250, 200, 30)
  t = np.arange(int(round(RATE * seconds))) / RATE
  stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1320 * t)], 1)
  return frames, stereo


def _peak_hz(x, rate):
  spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
  return np.argmax(spec) * rate / x.size


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
  if importlib.util.find_spec('av') is None:
    pytest.skip('PyAV is not installed')
  path = str(tmp_path_factory.mktemp('video') / 'in.mp4')
  frames, stereo = _clip()
  video_io.write_video(path, frames, FPS, stereo, RATE)
  return path


@needs_av
def test_round_trip_first_channel_and_frame_rule(clip_file):
  v = video_io.read_video(clip_file)
  frames, _ = _clip()
  assert v.frames.shape == (30, 48, 64, 3) and v.frames.dtype == np.uint8
  assert v.fps == FPS and v.duration == pytest.approx(SECONDS)
  np.testing.assert_allclose(v.frame_times, np.arange(30) / FPS, atol=1e-6)
  assert np.abs(v.frames.astype(int) - frames).mean() < 4  # Lossy, but the same pictures.
  # The sound: the stream's declared length (no AAC padding); audio = the first channel.
  assert v.sample_rate == RATE and v.audio.dtype == np.float32
  assert v.audio.shape == (int(RATE * SECONDS),) and v.audio_channels.shape == (v.audio.size, 2)
  np.testing.assert_array_equal(v.audio, v.audio_channels[:, 0])
  mid = slice(RATE // 4, -RATE // 4)
  assert abs(_peak_hz(v.audio[mid], RATE) - 440) < 5
  assert abs(_peak_hz(v.audio_channels[mid, 1], RATE) - 1320) < 5
  assert np.sqrt(np.mean(v.audio[mid] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.05)

  # fps: frame k is the source frame shown at k / fps; round(duration * fps) frames.
  v8 = video_io.read_video(clip_file, fps=8)
  assert v8.frames.shape[0] == 20 and v8.fps == 8
  np.testing.assert_allclose(v8.frame_times, np.arange(20) / 8)
  for k in range(20):
    np.testing.assert_array_equal(v8.frames[k], v.frames[int(math.floor(k * FPS / 8))])
  short = video_io.read_video(clip_file, fps=8, max_seconds=1.0)
  assert short.frames.shape[0] == 8 and short.duration == 1.0 and short.audio.size == RATE
  short = video_io.read_video(clip_file, max_seconds=1.3)  # Frames at 0, 1/12, ..., 15/12.
  assert short.frames.shape[0] == 16 and short.duration == pytest.approx(1.3)


@needs_av
def test_odd_sizes_no_audio_and_errors(tmp_path, monkeypatch):
  frames, stereo = _clip(width=63, height=47, seconds=0.5)
  path = video_io.write_video(str(tmp_path / 'odd.mkv'), frames, FPS, stereo[:, 0], RATE)
  assert os.listdir(tmp_path) == ['odd.mkv']  # The temporary file was renamed.
  v = video_io.read_video(path)
  assert v.frames.shape == (6, 48, 64, 3)  # Padded to even with the last row / column.
  np.testing.assert_array_equal(v.frames[:, 47], v.frames[:, 46])
  assert v.audio_channels.shape[1] == 1 and abs(v.audio.size / RATE - 0.5) < 0.1

  monkeypatch.setattr(video_io, 'video_encoder', lambda: 'mpeg4')  # Builds without libx264.
  path = video_io.write_video(str(tmp_path / 'mpeg4.mp4'), frames, FPS, stereo, RATE)
  v = video_io.read_video(path)
  assert v.frames.shape == (6, 48, 64, 3) and v.audio_channels.shape[1] == 2
  monkeypatch.undo()
  silent = video_io.write_video(str(tmp_path / 'silent.mp4'), frames[:, :46, :62], FPS)
  v = video_io.read_video(silent)
  assert v.audio is None and v.frames.shape == (6, 46, 62, 3)
  with pytest.raises(video_io.VideoError, match=r'silent\.mp4 has no audio stream'):
    v.require_audio()
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'\0junk' * 200)
  with pytest.raises(video_io.VideoError, match=r'bad\.mp4 cannot be read as video'):
    video_io.read_video(str(bad))
  with pytest.raises(video_io.VideoError, match=r'nope\.mp4 does not exist'):
    video_io.read_video(str(tmp_path / 'nope.mp4'))
  import soundfile  # pylint: disable=g-import-not-at-top
  soundfile.write(str(tmp_path / 'a.wav'), stereo[:1000], RATE)
  with pytest.raises(video_io.VideoError, match=r'a\.wav has no video stream'):
    video_io.read_video(str(tmp_path / 'a.wav'))
  with pytest.raises(video_io.VideoError, match=r'\.mp4, \.m4v, \.mov, \.mkv'):
    video_io.write_video(str(tmp_path / 'x.avi'), frames, FPS)
  assert issubclass(video_io.VideoError, errors.DenseAVError)


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'av', None)  # `import av` now raises ImportError.
  with pytest.raises(errors.DenseAVError, match=r'pip install -e \.\[video\]'):
    video_io.read_video(str(tmp_path / 'in.mp4'))
  with pytest.raises(errors.DenseAVError, match=r'pip install -e \.\[video\]'):
    video_io.write_video(str(tmp_path / 'out.mp4'), np.zeros((1, 8, 8, 3), np.uint8), 10)


def test_step_taps_and_default_fps():
  # Steps of 0.25 s, 5 with sound: frame at t -> floor(t / 0.25) and its neighbours, clamped.
  taps = video.step_taps(np.array([0.0, 0.3, 0.5, 1.2, 3.0]), 0.25, 5)
  np.testing.assert_array_equal(taps, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [3, 4, 4],
                                       [3, 4, 4]])
  np.testing.assert_allclose(video.TIME_TAPS.sum(), 1.0, rtol=1e-6)
  assert video.output_fps(25.0) == 10 and video.output_fps(6.0) == 6
  assert video.output_fps(25.0, 8) == 8


@pytest.fixture(scope='module')
def model_dir(tiny_model):
  """A tiny converted model on disk (conftest.tiny_model, shared with test_predict)."""
  return tiny_model['model_dir']


def _cli(*args):
  """Runs predict.main in-process with these flags (absl-parsed), as test_predict."""
  predict_cli.define_flags()
  flags.FLAGS.unparse_flags()
  try:
    predict_cli.main(flags.FLAGS(['predict', *args]))
  finally:
    flags.FLAGS.unparse_flags()


@needs_av
def test_predict_video_cli_and_api(model_dir, clip_file, tmp_path, capsys):
  out = str(tmp_path / 'out.mp4')
  _cli('--checkpoint', model_dir, '--video', clip_file, '--out', out, '--video_fps', '8')
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('video in.mp4: 20 frames at 8 fps'), lines
  assert lines[0].endswith(f'wrote {out}')

  src, res = video_io.read_video(clip_file), video_io.read_video(out)
  assert res.frames.shape == (20, 48, 48, 3)  # round(2.5 s * 8 fps); the 48x48 centre crop.
  assert res.fps == 8 and abs(res.duration - src.duration) <= 1 / 8
  assert res.audio is not None and res.sample_rate == RATE
  assert abs(res.audio.size / RATE - src.audio.size / RATE) < 0.1
  assert abs(_peak_hz(res.audio[RATE // 4:-RATE // 4], RATE) - 440) < 5
  assert res.audio_channels.shape[1] == 2  # The original track, both channels.
  crops = np.stack([src.frames[int(k * FPS / 8)][:, 8:56] for k in range(20)])
  assert np.abs(res.frames.astype(int) - crops).mean() > 20  # The heat map is drawn.

  # The Python API, and the rule: frame k's map is predict's (and the evaluation's) map
  # with the time weights the audio mask times the Gaussian taps around the frame.
  model, params, config = predict.load_model(model_dir)
  info = video.predict_video(model, params, config, clip_file,
                                     str(tmp_path / 'api.mkv'), max_seconds=1.2)
  assert info['frames'] == 12 and info['fps'] == 10 and info['duration'] == pytest.approx(1.2)
  assert info['clips'] == 1 and info['heat_max'] > info['heat_min']
  assert video_io.read_video(str(tmp_path / 'api.mkv')).frames.shape[0] == 12
  vid = video_io.read_video(clip_file, fps=10)
  heat, hinfo = video.heat_maps(model, params, config, vid)
  assert heat.shape == (25, 16, 16) and hinfo['steps_per_clip'] > 1
  sr = config.input.sample_rate
  wav, valid = data_transforms.fit_length(audio_io.resample(vid.audio, RATE, sr),
                                          config.input.audio_samples)
  for k in (0, 13, 24):
    image = data_transforms.eval_image(_pil(vid.frames[k]), config.input.image_size)
    ref = predict.predict(model, params, config, image, wav, valid)
    g = video.step_taps(vid.frame_times[k:k + 1], hinfo['step_seconds'],
                        hinfo['valid_steps'])[0]
    sim = ref['sim'].astype(np.float64)  # [K, H, W, T]
    steps = sim.sum(0) if config.sim.head_agg == 'sum' else sim.max(0)
    w = video.TIME_TAPS * ref['audio_mask'][g]
    want = (steps[..., g] * w).sum(-1) / max(w.sum(), 1e-3)
    np.testing.assert_allclose(heat[k], want, atol=1e-4, rtol=1e-4)


def _pil(frame):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.fromarray(frame)


@needs_av
def test_video_mode_errors(model_dir, clip_file, tmp_path):
  from denseav_jax import cli  # pylint: disable=g-import-not-at-top
  base = ['--checkpoint', model_dir, '--video']
  with pytest.raises(errors.UserError, match='--image cannot be combined with --video'):
    _cli(*base, clip_file, '--out', str(tmp_path / 'o.mp4'), '--image', clip_file)
  with pytest.raises(errors.UserError, match=r'--out=.*o\.png: with --video'):
    _cli(*base, clip_file, '--out', str(tmp_path / 'o.png'))
  silent = video_io.write_video(str(tmp_path / 'silent.mp4'), _clip(seconds=0.5)[0], FPS)
  with pytest.raises(errors.UserError, match=r'--video=.*silent\.mp4 has no audio stream'):
    _cli(*base, silent, '--out', str(tmp_path / 'o.mp4'))
  with pytest.raises(errors.UserError, match=r'--video=.*missing\.mp4 does not exist'):
    _cli(*base, str(tmp_path / 'missing.mp4'), '--out', str(tmp_path / 'o.mp4'))
  assert not os.path.exists(tmp_path / 'o.mp4')


# --------------------------------------------------------------------------- PCA

def _planted(seed=0, noise=0.05):
  """Features a1 d1 + a2 d2 + a3 d3 (+ noise) with std(a) = 5, 3, 2 in 16 channels."""
  rng = np.random.default_rng(seed)
  dirs = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # [3, 16] orthonormal.
  def make(shape):
    coef = rng.normal(size=(*shape, 3)) * np.array([5.0, 3.0, 2.0])
    return (coef @ dirs + 1.0 + noise * rng.normal(size=(*shape, 16))).astype(np.float32), coef
  img, img_coef = make((2, 12, 12))
  aud, aud_coef = make((2, 1, 40))
  return img, aud, img_coef, aud_coef, dirs


def test_pca_rgb_shapes_range_and_planted_directions():
  img, aud, img_coef, aud_coef, dirs = _planted()
  image_rgb, audio_rgb = pca.pca_rgb(img, aud)
  assert image_rgb.shape == (2, 12, 12, 3) and audio_rgb.shape == (2, 1, 40, 3)
  assert image_rgb.dtype == audio_rgb.dtype == np.float32
  for x in (image_rgb, audio_rgb):
    assert x.min() >= 0.0 and x.max() <= 1.0
  again = pca.pca_rgb(img, aud)
  np.testing.assert_array_equal(again[0], image_rgb)
  np.testing.assert_array_equal(again[1], audio_rgb)

  # The components are the planted directions, in order of variance.
  x = np.concatenate([img.reshape(-1, 16), aud.reshape(-1, 16)])
  _, comps = pca.fit(x)
  np.testing.assert_allclose(np.abs(comps @ dirs.T), np.eye(3), atol=0.02)
  # Colour channel j follows the planted coefficient j, in both modalities (one fit).
  rgb = np.concatenate([image_rgb.reshape(-1, 3), audio_rgb.reshape(-1, 3)])
  coef = np.concatenate([img_coef.reshape(-1, 3), aud_coef.reshape(-1, 3)])
  for j in range(3):
    assert abs(np.corrcoef(rgb[:, j], coef[:, j])[0, 1]) > 0.95
  # The same vector gets the same colour in an image and in audio.
  img2, aud2 = img.copy(), aud.copy()
  aud2[1, 0, 7] = img2[0, 3, 4]
  a, b = pca.pca_rgb(img2, aud2)
  np.testing.assert_allclose(a[0, 3, 4], b[1, 0, 7], atol=1e-6)
  # A subsampled fit (fixed subset) is deterministic and close to the full one.
  sub = pca.pca_rgb(img, aud, max_fit=150)
  np.testing.assert_array_equal(sub[0], pca.pca_rgb(img, aud, max_fit=150)[0])
  assert np.abs(sub[0] - image_rgb).mean() < 0.05


def test_pca_figure():
  img, aud, *_ = _planted()
  image_rgb, audio_rgb = pca.pca_rgb(img, aud)
  images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
  rgb = pca.pca_figure(images, image_rgb, audio_rgb, ['a', 'b'])
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
  assert rgb.shape[1] > rgb.shape[0] > 300 and rgb.std() > 10
  with pytest.raises(ValueError, match='n titles'):
    pca.pca_figure(images, image_rgb, audio_rgb, ['a'])


def test_demo_video_of_the_synthetic_world(tmp_path):
  from denseav_jax.inference import demo_app  # pylint: disable=g-import-not-at-top
  c = load_config('synthetic.py', 'runlocal')
  out = str(tmp_path / 'demo.mp4')
  info = demo_app.synthetic_video(c, out, scenes=2, fps=10.0)
  clip_s = c.input.audio_samples / c.input.sample_rate
  assert len(info['scenes']) == 2 and info['seconds'] == pytest.approx(2 * clip_s)
  vid = video_io.read_video(out)
  assert len(vid.frames) == round(2 * clip_s * 10)
  assert vid.frames.shape[1] >= 256  # Shown enlarged.
  assert len(vid.audio) / vid.sample_rate == pytest.approx(2 * clip_s, abs=0.05)
  # Scene 0's caption is in the first clip's sound, scene 1's in the second's.
  half = len(vid.audio) // 2
  assert np.abs(vid.audio[:half]).max() > 0.01 and np.abs(vid.audio[half:]).max() > 0.01
