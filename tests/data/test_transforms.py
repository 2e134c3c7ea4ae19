"""The data transforms against direct numpy statements of what they compute:
audio decoding and resampling, negative-audio splicing, extra masking, mixup masks, label
decoding, the image transforms (torchvision's semantics for PIL images)."""

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from denseav_jax.data import audio_io
from denseav_jax import errors
from denseav_jax.data import transforms as T

SR = 16000


# ------------------------------------------------------------------------------ audio

@pytest.mark.parametrize('rate', [8000, 22050, 44100, 48000])
def test_resample_matches_analytic_sine(rate):
  n = 2 * rate
  x = np.sin(2 * np.pi * 1000 * np.arange(n) / rate)
  y = audio_io.resample(x, rate, SR)
  assert y.dtype == np.float32 and len(y) == 2 * SR
  ref = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / SR)
  inner = slice(800, len(y) - 800)  # 50 ms from each edge.
  assert np.abs(y - ref)[inner].max() < 1e-3


def test_resample_is_band_limited_and_identity_at_same_rate():
  x = np.sin(2 * np.pi * 9000 * np.arange(44100) / 44100)  # Above 16 kHz's Nyquist.
  y = audio_io.resample(x, 44100, SR)
  assert np.sqrt(np.mean(y[800:-800] ** 2)) < 1e-3
  z = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
  np.testing.assert_array_equal(audio_io.resample(z, SR, SR), z)
  assert audio_io.resample(np.stack([z, -z], 1), SR, 8000).shape == (500, 2)


@pytest.mark.parametrize('rate', [8000, 16000, 22050, 44100, 48000])
def test_resampler_in_pieces_is_resample_of_the_whole(rate):
  """audio_io.Resampler (predict --video's sound, a piece at a time): its pieces,
  concatenated, are resample(whole sound), bit for bit, however the sound is cut."""
  rng = np.random.default_rng(rate)
  for n in (700, 37001):
    x = (0.3 * rng.standard_normal(n)).astype(np.float32)
    want = audio_io.resample(x, rate, SR)
    for piece in (n, 1024, 4410):
      r = audio_io.Resampler(rate, SR)
      got = np.concatenate([r.push(x[i:i + piece]) for i in range(0, n, piece)] + [r.flush()])
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, want)
    stereo = (0.3 * rng.standard_normal((n, 2))).astype(np.float32)
    r = audio_io.Resampler(rate, SR, 2)
    got = np.concatenate([r.push(stereo[i:i + 999]) for i in range(0, n, 999)] + [r.flush()])
    np.testing.assert_array_equal(got, audio_io.resample(stereo, rate, SR))


def test_first_channel_or_mean_and_pcm16_grid(tmp_path):
  t = np.arange(SR) / SR
  left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.sin(2 * np.pi * 700 * t)
  path = str(tmp_path / 'stereo.wav')
  sf.write(path, np.stack([left, right], 1), SR, subtype='PCM_16')
  pcm_left = np.round(left * 32767) / 32768  # What the 16-bit file holds (soundfile scales by 32767).
  first = audio_io.load(path)
  assert first.dtype == np.float32 and first.shape == (SR,)
  np.testing.assert_allclose(first, pcm_left, atol=1 / 32768)
  np.testing.assert_array_equal(first * 32768, np.round(first * 32768))  # On the int16 grid.
  mean = audio_io.load(path, channels='mean')
  np.testing.assert_allclose(mean, (left + right) / 2, atol=2 / 32768)
  # Other rates are resampled to 16 kHz.
  sf.write(path, np.stack([left, right], 1)[::2], SR // 2, subtype='PCM_16')
  assert len(audio_io.load(path)) == SR
  np.testing.assert_array_equal(audio_io.to_pcm16(np.array([1.0, -1.0, 0.5 / 32768, 2.0])),
                                [32767, -32768, 0, 32767])


@pytest.mark.parametrize('fmt,ext', [('WAV', 'wav'), ('FLAC', 'flac'), ('OGG', 'ogg'),
                                     ('MP3', 'mp3')])
def test_decodes_every_format_and_names_faults(tmp_path, fmt, ext):
  x = (0.5 * np.sin(np.arange(3 * SR) * 0.05)).astype(np.float32)
  path = str(tmp_path / f'a.{ext}')
  sf.write(path, x, SR, format=fmt)
  data, rate = audio_io.decode(path)
  assert rate == SR and data.shape[1] == 1 and abs(len(data) - len(x)) < 2000
  with open(path, 'rb') as f:
    raw = f.read()
  assert audio_io.decode(raw, path='mem')[0].shape == data.shape  # From bytes too.
  cut = tmp_path / f'cut.{ext}'
  cut.write_bytes(raw[:int(len(raw) * 0.4)])
  with pytest.raises(errors.BadExample) as e:
    audio_io.decode(str(cut))
  assert e.value.reason in ('truncated', 'undecodable', 'empty') and 'cut.' in e.value.path
  (tmp_path / f'empty.{ext}').write_bytes(b'')
  with pytest.raises(errors.BadExample, match='empty'):
    audio_io.decode(str(tmp_path / f'empty.{ext}'))
  (tmp_path / f'junk.{ext}').write_bytes(bytes(range(1, 200)) * 40)
  with pytest.raises(errors.BadExample, match='undecodable'):
    audio_io.decode(str(tmp_path / f'junk.{ext}'))
  with pytest.raises(errors.BadExample, match='missing'):
    audio_io.decode(str(tmp_path / f'none.{ext}'))


def test_truncated_wav_is_detected_although_libsndfile_reads_it(tmp_path):
  path = tmp_path / 'a.wav'
  sf.write(str(path), np.zeros(SR, np.float32) + 0.1, SR, subtype='PCM_16')
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  assert len(sf.read(str(path))[0]) > 0  # soundfile alone silently returns half the clip.
  with pytest.raises(errors.BadExample, match='truncated.*header declares'):
    audio_io.decode(str(path))


def _np_splice_weights(n, e):
  """Direct statement: 1 -> 0 raised cosine over e samples, zeros, 0 -> 1."""
  k = np.arange(e)
  fade = 0.5 * (1 + np.cos(np.pi * k / (e - 1))) if e > 1 else np.ones(1)
  return np.concatenate([fade, np.zeros(n - 2 * e), 1 - fade])


def test_splice_weights_and_pos_mask():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(10_000).astype(np.float32)
  piece = rng.standard_normal(3000).astype(np.float32)
  out, pos = T.splice(x, piece, 2000, 800)
  w = _np_splice_weights(3000, 800)
  np.testing.assert_allclose(pos[2000:5000], w, atol=1e-6)
  assert (pos[:2000] == 1).all() and (pos[5000:] == 1).all()
  np.testing.assert_allclose(out[2000:5000], w * x[2000:5000] + (1 - w) * piece, atol=1e-6)
  np.testing.assert_array_equal(out[:2000], x[:2000])
  np.testing.assert_array_equal(out[5000:], x[5000:])
  assert pos[2000 + 1500] == 0 and pos[2000] == 1 and pos[4999] == 1


def test_negative_splice_lengths_and_easing():
  neg = np.arange(1, 10 * SR + 1, dtype=np.float32)  # Values name their position.
  x = np.zeros(8 * SR, np.float32)
  for seed in range(40):
    out, pos = T.negative_splice(x, neg, np.random.default_rng(seed), SR)
    # The release's procedure, stated directly with the same draws: a piece of the negative
    # (start uniform, then length uniform in [1 s, min(4 s, what is left)]), ramps of
    # e = min(n / 2, max(n / 4, 0.5 s)), placed where it fits.
    rng = np.random.default_rng(seed)
    first = int(rng.integers(0, len(neg) - SR + 1))
    n = int(rng.integers(SR, min(4 * SR, len(neg) - first) + 1))
    e = min(n // 2, max(n // 4, SR // 2))
    at = int(rng.integers(0, len(x) - n))
    want = np.ones(len(x))
    want[at:at + n] = _np_splice_weights(n, e)
    np.testing.assert_allclose(pos, want, atol=1e-6)
    assert SR <= n <= 4 * SR and at + n < len(x)
    np.testing.assert_allclose(out[at:at + n], (1 - want[at:at + n]) * neg[first:first + n],
                               atol=1e-6 * len(neg))  # float32 weights times values ~1e5.
    assert (out[:at] == 0).all() and (out[at + n:] == 0).all()
  # A negative shorter than 1 s is used whole; one that does not fit leaves the clip alone.
  out, pos = T.negative_splice(np.zeros(SR * 3, np.float32), np.ones(SR // 2, np.float32),
                               np.random.default_rng(1), SR)
  assert np.count_nonzero(pos < 1) >= SR // 2 - 50 and np.count_nonzero(out) > 0
  short = np.ones(SR // 4, np.float32)
  out, pos = T.negative_splice(short, np.ones(2 * SR, np.float32), np.random.default_rng(1), SR)
  np.testing.assert_array_equal(out, short)
  np.testing.assert_array_equal(pos, 1)


def test_random_subclip_follows_the_release_rule():
  x = np.arange(100)
  for seed in range(50):
    piece = T.random_subclip(x, np.random.default_rng(seed), 10, 40)
    assert 10 <= len(piece) <= 40 and (np.diff(piece) == 1).all()
  np.testing.assert_array_equal(T.random_subclip(x[:5], np.random.default_rng(0), 10, 40), x[:5])


def test_fit_length_and_extra_masking():
  x = np.arange(1, 101, dtype=np.float32)
  out, n = T.fit_length(x, 150)
  assert n == 100 and (out[100:] == 0).all() and (out[:100] == x).all()
  out, n = T.fit_length(x, 60)
  assert n == 60 and (out == x[:60]).all()
  kept = 0
  for seed in range(60):
    audio = np.arange(1, 301, dtype=np.float32)
    start, end = T.extra_masking(audio, 250, np.random.default_rng(seed), 50)
    if (start, end) == (0, 250):
      assert (audio == np.arange(1, 301)).all()
      kept += 1
      continue
    assert 0 <= start and 50 <= end - start < 250 and end <= 250
    assert (audio[:start] == 0).all() and (audio[end:] == 0).all()
    np.testing.assert_array_equal(audio[start:end], np.arange(start + 1, end + 1))
  assert 15 < kept < 45  # Probability 1/2.
  audio = np.ones(100, np.float32)  # Too short to mask: unchanged.
  assert T.extra_masking(audio, 40, np.random.default_rng(0), 50) == (0, 40)


# ------------------------------------------------------------------------------- mixup

def _img(value, s=8):
  return np.full((s, s, 3), value, np.uint8)


def test_half_size_is_the_2x2_mean():
  x = np.random.default_rng(0).integers(0, 256, (8, 6, 3)).astype(np.uint8)
  ref = x.astype(np.float64).reshape(4, 2, 3, 2, 3).mean((1, 3))
  got = T.half_size(x)
  assert got.shape == (4, 3, 3)
  assert np.abs(got - ref).max() <= 0.5


def test_quad_mixup_masks_the_true_quadrants():
  images = [_img(10), _img(20), _img(30), _img(40)]
  out, mask = T.quad_mixup(images, [False, True, False, True])
  # Slots: top-left, bottom-left, top-right, bottom-right.
  assert (out[:4, :4] == 10).all() and (out[4:, :4] == 20).all()
  assert (out[:4, 4:] == 30).all() and (out[4:, 4:] == 40).all()
  expected = np.zeros((8, 8), np.uint8)
  expected[4:, :4] = expected[4:, 4:] = 1
  np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize('pos_is_background', [True, False])
def test_bg_mixup_mask(pos_is_background):
  pos, neg = _img(200, 16), _img(50, 16)
  out, mask = T.bg_mixup(pos, neg, pos_is_background, 3, 5)
  fg = np.zeros((16, 16), bool)
  fg[3:11, 5:13] = True
  true_pixels = ~fg if pos_is_background else fg
  np.testing.assert_array_equal(mask, true_pixels.astype(np.uint8))
  np.testing.assert_array_equal(out[..., 0] == 200, true_pixels)


def test_patch_mixup_mask():
  pos, neg = _img(1, 16), _img(2, 16)
  choice = np.array([[1, 0], [0, 1]])
  out, mask = T.patch_mixup(pos, neg, choice, 8)
  np.testing.assert_array_equal(mask, np.kron(choice, np.ones((8, 8))).astype(np.uint8))
  np.testing.assert_array_equal(out[..., 0], np.where(mask == 1, 1, 2))
  with pytest.raises(ValueError, match='does not divide'):
    T.patch_mixup(_img(1, 12), _img(2, 12), choice, 8)


def test_choose_mixup_probabilities():
  rng = np.random.default_rng(0)
  draws = [T.choose_mixup(rng, 0.2, 0.3, 0.1) for _ in range(4000)]
  freq = {k: draws.count(k) / len(draws) for k in ('quad', 'bg', 'patch', None)}
  for k, p in (('quad', 0.2), ('bg', 0.3), ('patch', 0.1), (None, 0.4)):
    assert abs(freq[k] - p) < 0.03, freq
  with pytest.raises(ValueError, match='> 1'):
    T.choose_mixup(rng, 0.6, 0.6, 0.0)


# ------------------------------------------------------------------------ labels, images

def test_ade_label_decoding():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
  ref = np.floor(rgb[..., 0] / 10).astype(np.int64) * 256 + rgb[..., 1]
  np.testing.assert_array_equal(T.decode_ade_label(rgb), ref)
  assert T.decode_ade_label(np.array([[[147, 9, 3]]], np.uint8))[0, 0] == 14 * 256 + 9


def test_eval_label_is_nearest_resize_and_centre_crop():
  cls = np.repeat(np.arange(12)[None, :], 6, 0)  # [6, 12]: class = column.
  rgb = np.stack([(cls // 256) * 10, cls % 256, np.zeros_like(cls)], -1).astype(np.uint8)
  out = T.eval_label(Image.fromarray(rgb), 3)  # -> 3 x 6 (nearest), centre crop 3 x 3.
  assert out.shape == (3, 3) and out.dtype == np.int32
  assert set(np.unique(out)) <= set(range(12))
  np.testing.assert_array_equal(out, out[:1].repeat(3, 0))  # Rows equal: nearest, no blend.
  cols = (np.arange(6) + 0.5) * 12 / 6  # PIL nearest: floor((x + 0.5) * scale).
  left = int(round((6 - 3) / 2))  # torchvision CenterCrop: round() (half to even) = 2.
  np.testing.assert_array_equal(out[0], np.floor(cols).astype(int)[left:left + 3])


def test_eval_image_resizes_short_side_and_centre_crops():
  img = np.zeros((40, 100, 3), np.uint8)
  img[:, 30:70] = 255  # A white band in the middle 40 columns: the centre crop.
  out = T.eval_image(Image.fromarray(img), 64)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  assert out[:, 4:60].min() > 200


def _np_luma(x):
  """PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16."""
  x = x.astype(np.int64)
  return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _np_blend(a, b, f):
  """PIL's Image.blend(a, b, f) for uint8: a + f (b - a), clipped, truncated."""
  v = a.astype(np.float32) + np.float32(f) * (b.astype(np.float32) - a.astype(np.float32))
  return np.clip(v, 0, 255).astype(np.uint8)


@pytest.mark.parametrize('factor', [0.8, 0.93, 1.17])
def test_colour_jitter_with_fixed_factors(factor):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (12, 9, 3)).astype(np.uint8)
  img = Image.fromarray(x)
  none = (None, None, None, None)
  # Brightness: blend with black.
  got = np.asarray(T.color_jitter(img, [0], (factor,) + none[1:]))
  np.testing.assert_allclose(got, _np_blend(np.zeros_like(x), x, factor), atol=1)
  # Contrast: blend with the rounded mean luminance.
  mean = int(_np_luma(x).mean() + 0.5)
  got = np.asarray(T.color_jitter(img, [1], (None, factor, None, None)))
  np.testing.assert_allclose(got, _np_blend(np.full_like(x, mean), x, factor), atol=1)
  # Saturation: blend with the luminance image.
  lum = np.repeat(_np_luma(x)[..., None], 3, -1).astype(np.uint8)
  got = np.asarray(T.color_jitter(img, [2], (None, None, factor, None)))
  np.testing.assert_allclose(got, _np_blend(lum, x, factor), atol=1)
  # The order is applied as given: contrast then brightness differs from the reverse.
  a = np.asarray(T.color_jitter(img, [1, 0], (factor, 1.5, None, None)))
  b = np.asarray(T.color_jitter(img, [0, 1], (factor, 1.5, None, None)))
  np.testing.assert_allclose(a, _np_blend(np.zeros_like(x), np.asarray(
      T.color_jitter(img, [1], (None, 1.5, None, None))), factor), atol=1)
  assert factor == 1 or not np.array_equal(a, b)


def test_hue_shift_rotates_primaries():
  prim = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
  img = Image.fromarray(prim)
  shift = np.asarray(T.adjust_hue(img, 1 / 3))  # +85 of 256 hue steps: red -> green.
  np.testing.assert_allclose(shift[0, 0], [0, 255, 0], atol=8)
  np.testing.assert_allclose(shift[0, 1], [0, 0, 255], atol=8)
  back = np.asarray(T.adjust_hue(img, -1 / 3))  # Negative factors wrap: red -> blue.
  np.testing.assert_allclose(back[0, 0], [0, 0, 255], atol=8)
  np.testing.assert_array_equal(np.asarray(T.adjust_hue(img, 0.0)), prim)


def test_grayscale_is_pil_luma_on_three_channels():
  x = np.random.default_rng(2).integers(0, 256, (4, 5, 3)).astype(np.uint8)
  got = np.asarray(T.grayscale(Image.fromarray(x)))
  np.testing.assert_array_equal(got, np.repeat(_np_luma(x)[..., None], 3, -1))


def test_random_resized_crop_box():
  rng = np.random.default_rng(0)
  for _ in range(300):
    i, j, h, w = T.random_resized_crop_box(320, 240, rng)
    assert 0 <= i and i + h <= 240 and 0 <= j and j + w <= 320
    assert 0.08 * 320 * 240 * 0.9 <= h * w <= 320 * 240
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
  # A 1000 x 10 strip: no try fits, the fallback is the centred crop of the widest ratio.
  i, j, h, w = T.random_resized_crop_box(1000, 10, np.random.default_rng(0))
  assert (h, w) == (10, round(10 * 4 / 3)) and i == 0 and j == (1000 - w) // 2


def test_jitter_params_ranges():
  rng = np.random.default_rng(0)
  for _ in range(100):
    order, (b, c, s, h) = T.jitter_params(rng)
    assert sorted(order) == [0, 1, 2, 3]
    assert all(0.8 <= f <= 1.2 for f in (b, c, s)) and -0.2 <= h <= 0.2


def test_train_image_shape_and_determinism():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3)).astype(np.uint8))
  aug = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5,
             jitter=(0.2, 0.2, 0.2, 0.2), grayscale=0.1)
  a = T.train_image(img, 32, np.random.default_rng(5), aug)
  b = T.train_image(img, 32, np.random.default_rng(5), aug)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  grays = sum(bool((T.train_image(img, 16, np.random.default_rng(s), aug)
                    .std(axis=-1) == 0).all()) for s in range(200))
  assert 5 <= grays <= 40  # RandomGrayscale(p=0.1).


def test_open_image_faults(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, 'JPEG')
  data = buf.getvalue()
  assert T.open_image(data).mode == 'RGB'  # Greyscale files come back as RGB.
  with pytest.raises(errors.BadExample, match='undecodable'):
    T.open_image(data[:len(data) // 3], path='x.jpg')
  with pytest.raises(errors.BadExample, match='empty'):
    T.open_image(b'', path='x.jpg')
  with pytest.raises(errors.BadExample, match='missing'):
    T.open_image(str(tmp_path / 'none.jpg'))
