"""denseav_jax.predict: one image + one audio clip -> heat-map figure and features."""

import os
import subprocess
import sys
import wave

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config, subprocess_env
from denseav_jax import errors
from denseav_jax.checkpoint import model_io
from denseav_jax.checkpoint import resolve
from denseav_jax import predict as predict_cli
from denseav_jax.inference import predict
from denseav_jax.similarity import dense
from denseav_jax.checkpoint import train_checkpoints as ckpt_lib
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib

WAV_RATE = 22050
WAV_SECONDS = 1.7


def _write_wav(path, x, rate, width=2):
  """x: [n, channels] floats in [-1, 1] -> PCM .wav of `width` bytes per sample."""
  x = np.clip(np.asarray(x, np.float64), -1, 1)
  if width == 1:
    raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
  elif width == 2:
    raw = np.round(x * 32767).astype('<i2').tobytes()
  elif width == 3:
    v = np.round(x * (2 ** 23 - 1)).astype(np.int64).reshape(-1) & 0xFFFFFF
    raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, v >> 16], 1).astype(np.uint8).tobytes()
  else:
    raw = np.round(x * (2 ** 31 - 1)).astype('<i4').tobytes()
  with wave.open(str(path), 'wb') as f:
    f.setnchannels(x.shape[1])
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(raw)


def _stereo_caption(rate, seconds):
  """Two different gated tones on the two channels (so the downmix matters)."""
  t = np.arange(int(round(seconds * rate))) / rate
  gate = (np.sin(2 * np.pi * 1.5 * t) > -0.3).astype(np.float64)
  left = 0.6 * np.sin(2 * np.pi * 440 * t) * gate
  right = 0.3 * np.sin(2 * np.pi * 1320 * t) * gate
  return np.stack([left, right], 1)


@pytest.fixture(scope='module')
def setup(tmp_path_factory, tiny_model):
  """A tiny converted model on disk (conftest.tiny_model, shared with test_video.py), a PNG
  and a stereo 22.05 kHz WAV."""
  tmp = tmp_path_factory.mktemp('predict')
  config, model, params = tiny_model['config'], tiny_model['model'], tiny_model['params']
  model_dir = tiny_model['model_dir']
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (48, 80, 4), dtype=np.uint8)  # RGBA, not square.
  img[10:40, 30:60, :3] = (30, 200, 40)
  Image.fromarray(img, 'RGBA').save(tmp / 'scene.png')
  _write_wav(tmp / 'caption.wav', _stereo_caption(WAV_RATE, WAV_SECONDS), WAV_RATE)
  return dict(tmp=tmp, config=config, model=model, params=params, model_dir=model_dir,
              image=str(tmp / 'scene.png'), audio=str(tmp / 'caption.wav'))


def _run(*args, timeout=240):
  return subprocess.run([sys.executable, '-m', 'denseav_jax.predict', *args], cwd=ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _scores(feats, config, **kw):
  """dense.scores of the saved [C, ...] features as a 1 x 1 batch."""
  return float(dense.scores(
      jnp.asarray(np.transpose(feats['audio_feats'], (1, 2, 0))[None]),
      jnp.asarray(feats['audio_mask'][None]),
      jnp.asarray(np.transpose(feats['image_feats'], (1, 2, 0))[None]),
      num_heads=config.model.num_heads, agg=config.sim.agg, head_agg=config.sim.head_agg,
      nonneg=config.sim.nonneg, **kw)[0, 0])


def _masked_mean(x, mask):
  return float((x * mask).sum() / max(mask.sum(), 1e-3))


def _cli(*args):
  """Runs predict.main in-process with these flags."""
  predict_cli.define_flags()
  flags.FLAGS.unparse_flags()
  try:
    argv = flags.FLAGS(['predict', *args])
    predict_cli.main(argv)
  finally:
    flags.FLAGS.unparse_flags()


def test_cli_end_to_end(setup, capsys):
  """The CLI in-process (flags parsed by absl), from the converted model on disk."""
  tmp, config = setup['tmp'], setup['config']
  out_png, out_npz = str(tmp / 'out' / 'heat.png'), str(tmp / 'out' / 'feats.npz')
  _cli('--checkpoint', setup['model_dir'], '--image', setup['image'], '--audio',
       setup['audio'], '--out', out_png, '--save-features', out_npz)
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('score ') and out_npz in lines[0], lines

  with open(out_png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with Image.open(out_png) as im:
    assert im.format == 'PNG' and im.width > 400 and im.height > 300
    assert np.asarray(im.convert('RGB')).std() > 10

  with np.load(out_npz) as z:
    feats = {k: z[k] for k in z.files}
  assert sorted(feats) == sorted(predict.FEATURE_KEYS)
  c, k = config.model.code_dim, config.model.num_heads
  g = config.input.image_size // config.model.image.patch_size
  t = feats['audio_mask'].shape[0]
  assert feats['image_feats'].shape == (c, g, g)
  assert feats['audio_feats'].shape == (c, 1, t)
  assert feats['sim'].shape == (k, g, g, t)
  assert feats['score'].shape == ()
  assert feats['audio_mask'].dtype == np.bool_
  for key in ('image_feats', 'audio_feats', 'sim', 'score'):
    assert feats[key].dtype == np.float32, key
  # 1.7 s of 3 s: the padded tail is masked, the start is not.
  assert feats['audio_mask'][0] and not feats['audio_mask'][-1]

  # The score is dense.scores of the saved features (1 x 1 batch)...
  np.testing.assert_allclose(feats['score'], _scores(feats, config), atol=1e-5)
  # ...and, for misa, the masked time mean of sim's max over image space.
  assert config.sim.agg == 'misa'
  curve = feats['sim'].max(axis=(0, 1, 2))
  np.testing.assert_allclose(feats['score'], _masked_mean(curve, feats['audio_mask']),
                             atol=1e-5)
  # sim is the per-head volume of the saved features times the audio mask (the release's
  # get_pairwise_sims): 0 at the padded steps.
  a = np.transpose(feats['audio_feats'], (1, 2, 0))
  v = np.transpose(feats['image_feats'], (1, 2, 0))
  np.testing.assert_allclose(feats['sim'][0], np.einsum('ftc,hwc,t->hwt', a, v,
                                                        feats['audio_mask']),
                             atol=1e-4, rtol=1e-4)

  # The loaded checkpoint gives what the in-memory parameters give through the API.
  image = predict.load_image(setup['image'], config.input.image_size)
  audio, audio_len = predict.load_audio(setup['audio'], config)
  assert audio_len == int(round(WAV_SECONDS * config.input.sample_rate))
  ref = predict.predict(setup['model'], setup['params'], config, image, audio, audio_len)
  for key in predict.FEATURE_KEYS:
    np.testing.assert_allclose(feats[key], ref[key], atol=1e-5, err_msg=key)


def test_two_heads_workdir_checkpoint_and_figure(setup):
  tmp = setup['tmp']
  config = load_config()
  config.model.num_heads = 2  # Splits the same channels in two: same parameter shapes.
  params = setup['params']
  tx = optim.make_optimizer(config)
  state = state_lib.TrainState(step=jnp.array(3, jnp.int32), params=params,
                               opt_state=tx.init(params))
  workdir = str(tmp / 'run')
  ckpts = ckpt_lib.TrainCheckpoints(workdir, async_save=False)
  ckpts.save(3, state, {'phase': 2})
  ckpts.close()

  # Without a config.json beside the parameters the library asks for the config (naming
  # the path, not a flag); the command line names --config.
  with pytest.raises(resolve.ResolveError, match='without a config.json') as e:
    predict.load_model(workdir)
  assert e.value.argument == 'config' and workdir in str(e.value) and '--' not in str(e.value)
  with pytest.raises(errors.UserError, match='--config is needed: .*run is a training'):
    _cli('--checkpoint', workdir, '--image', setup['image'], '--audio', setup['audio'],
         '--out', str(tmp / 'o.png'))
  with pytest.raises(resolve.ResolveError, match=r'no checkpoint 4 in .*steps there: \[3\]'):
    predict.load_model(workdir, config, step=4)
  other = load_config()
  other.model.code_dim = 32
  with pytest.raises(errors.CheckpointError, match='does not match the model') as e:
    predict.load_model(workdir, other)
  assert '\n' not in str(e.value)
  model2, loaded, config2 = predict.load_model(workdir, config)
  for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  image = predict.load_image(setup['image'], config.input.image_size)
  audio, audio_len = predict.load_audio(setup['audio'], config)
  out = predict.predict(model2, loaded, config2, image, audio, audio_len)
  g = config.input.image_size // config.model.image.patch_size
  t = out['audio_mask'].shape[0]
  assert out['sim'].shape == (2, g, g, t) and out['heatmaps'].shape == (2, g, g)
  np.testing.assert_allclose(out['score'], _scores(out, config), atol=1e-5)
  # max_elementwise misa: max over heads and space, masked mean over time.
  np.testing.assert_allclose(
      out['score'], _masked_mean(out['sim'].max(axis=(0, 1, 2)), out['audio_mask']),
      atol=1e-5)
  np.testing.assert_allclose(
      out['score'], _masked_mean(out['combined_activation'], out['audio_mask']), atol=1e-5)
  rgb = predict.draw_figure(image, out, config, 'two heads')
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[1] > 800
  Image.fromarray(rgb).save(tmp / 'two_heads.png')

  # head_agg='sum': per-head misa, summed.
  config.sim.head_agg = 'sum'
  out = predict.predict(model2, loaded, config, image, audio, audio_len)
  np.testing.assert_allclose(out['score'], _scores(out, config), atol=1e-5)
  per_head = [_masked_mean(out['sim'][i].max(axis=(0, 1)), out['audio_mask']) for i in (0, 1)]
  np.testing.assert_allclose(out['score'], sum(per_head), atol=1e-5)


@pytest.mark.parametrize('width', [1, 2, 3, 4])
def test_wav_sample_widths_and_channels(tmp_path, width):
  config = load_config()
  sr = config.input.sample_rate
  x = 0.5 * np.sin(2 * np.pi * 300 * np.arange(sr // 2) / sr)
  three = np.stack([x, -x, 3 * x], 1) / 1.5  # Mean over channels = x / 1.5.
  path = tmp_path / 'a.wav'
  _write_wav(path, three, sr, width)
  audio, n = predict.load_audio(str(path), config)  # The first channel, as the release.
  assert audio.dtype == np.float32 and audio.shape == (predict.clip_length(config),)
  assert n == sr // 2 and not audio[n:].any()
  atol = {1: 0.02}.get(width, 2e-4)
  np.testing.assert_allclose(audio[:n], x / 1.5, atol=atol)
  mean, _ = predict.load_audio(str(path), config, channels='mean')
  np.testing.assert_allclose(mean[:n], x / 1.5, atol=atol)
  other = np.stack([x, 0.2 * x], 1)
  _write_wav(path, other, sr, width)
  first, _ = predict.load_audio(str(path), config)
  mean, _ = predict.load_audio(str(path), config, channels='mean')
  np.testing.assert_allclose(first[:n], x, atol=atol)
  np.testing.assert_allclose(mean[:n], 0.6 * x, atol=atol)


@pytest.mark.parametrize('fmt,ext', [('FLAC', 'flac'), ('OGG', 'ogg'), ('MP3', 'mp3')])
def test_compressed_audio_formats(tmp_path, fmt, ext):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  config = load_config()
  t = np.arange(22050) / 22050
  x = 0.5 * np.sin(2 * np.pi * 440 * t)
  sf.write(str(tmp_path / f'a.{ext}'), x, 22050, format=fmt)
  audio, n = predict.load_audio(str(tmp_path / f'a.{ext}'), config)
  assert abs(n - 16000) < 1200  # Codec delay / padding: about 1 s at 16 kHz.
  ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
  # The same tone (lossy codecs shift the phase slightly): compare spectra.
  spec = np.abs(np.fft.rfft(audio[2000:14000]))
  assert abs(np.argmax(spec) * 16000 / 12000 - 440) < 3
  assert abs(np.sqrt(np.mean(audio[2000:14000] ** 2)) - np.sqrt(np.mean(ref ** 2))) < 0.05


def test_numpy_audio(tmp_path):
  config = load_config()
  length = predict.clip_length(config)
  x = np.sin(2 * np.pi * 500 * np.arange(8000 * 5) / 8000).astype(np.float32)  # 5 s > clip.
  np.save(tmp_path / 'a.npy', np.stack([x, x], 1))
  np.savez(tmp_path / 'b.npz', audio=x, sample_rate=8000)
  a, n = predict.load_audio(str(tmp_path / 'a.npy'), config, audio_rate=8000)
  b, m = predict.load_audio(str(tmp_path / 'b.npz'), config)
  assert n == m == length  # Cut to the clip.
  np.testing.assert_allclose(a, b, atol=1e-6)
  ref = np.sin(2 * np.pi * 500 * np.arange(length) / 16000)
  np.testing.assert_allclose(a[800:-800], ref[800:-800], atol=1e-3)


def test_load_image_resizes_short_side_and_centre_crops():
  img = np.zeros((40, 100, 3), np.uint8)
  img[:, 30:70] = 255  # A white band in the middle 40 columns: the centre crop.
  out = predict.load_image(Image.fromarray(img), 64)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  assert out[:, 4:60].min() > 200  # Inside the band (edges blurred by the resize).


def test_clear_errors(setup, tmp_path):
  base = dict(checkpoint=setup['model_dir'], image=setup['image'], audio=setup['audio'],
              out=str(tmp_path / 'o.png'))

  def run(**kw):
    return _cli(*[f'--{k}={v}' for k, v in {**base, **kw}.items()])

  with pytest.raises(errors.UserError, match=r'--checkpoint: .*nope: no such directory'):
    run(checkpoint=str(tmp_path / 'nope'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(errors.UserError, match='--checkpoint: .*neither a converted model'):
    run(checkpoint=str(tmp_path / 'empty'))
  with pytest.raises(errors.UserError, match='--step: .*is a converted model'):
    run(step=5)
  bad_image = tmp_path / 'bad.png'
  bad_image.write_text('not an image')
  with pytest.raises(errors.UserError, match=r'--image: .*bad.png is not an image PIL can read'):
    run(image=str(bad_image))
  with pytest.raises(errors.UserError, match=r'^\S*bad.png is not an image PIL can read'):
    predict.load_image(str(bad_image), 64)  # The library names the file, not a flag.
  odd = tmp_path / 'clip.xyz'
  odd.write_bytes(b'\0' * 64)
  with pytest.raises(errors.UserError, match=r"unsupported audio format '.xyz'.*\.wav.*\.mp3"):
    run(audio=str(odd))
  bad_wav = tmp_path / 'bad.wav'
  bad_wav.write_bytes(b'RIFX' + b'\0' * 60)
  with pytest.raises(errors.UserError, match=r'--audio: .*bad.wav cannot be read as audio'):
    run(audio=str(bad_wav))
  with pytest.raises(errors.UserError, match='--audio=.*missing.wav does not exist'):
    run(audio=str(tmp_path / 'missing.wav'))
  with pytest.raises(errors.UserError, match='--out is required'):
    _cli(f'--checkpoint={setup["model_dir"]}', f'--image={setup["image"]}',
         f'--audio={setup["audio"]}')
  broken = tmp_path / 'broken'  # A model directory whose config.json is not JSON.
  os.makedirs(broken / model_io.PARAMS_DIR)
  (broken / model_io.CONFIG_FILE).write_text('{"model": ')
  with pytest.raises(errors.UserError, match=r'--config is needed: .*broken/config.json is '
                     'not valid JSON'):
    run(checkpoint=str(broken))


def test_cli_error_is_one_line(setup, tmp_path):
  r = _run('--checkpoint', str(tmp_path / 'nope'), '--image', setup['image'], '--audio',
           setup['audio'], '--out', str(tmp_path / 'o.png'), timeout=120)
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: --checkpoint: '), r.stderr
  assert 'no such directory' in errors[0]
  assert 'Traceback' not in r.stderr
