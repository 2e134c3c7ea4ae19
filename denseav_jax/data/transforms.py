"""Image and audio transforms of the data pipeline (docs/data.md#training-transforms).

Pure functions of their inputs and a numpy Generator, on the host, before batching:

images (PIL, torchvision's semantics for PIL input; the release uses torchvision)
  eval_image              resize the short side to S (bilinear), centre crop S x S
  train_image             RandomResizedCrop(S, scale, ratio) -> horizontal flip ->
                          ColorJitter(b, c, s, h) in random order -> RandomGrayscale
  eval_label              ADE20K label PNG -> nearest resize + centre crop -> class ids
  quad_mixup / bg_mixup / patch_mixup   mixed image + mask of the true image's pixels
audio (float32 at 16 kHz)
  random_subclip, plan_negative_splice, apply_splice, negative_splice
                          negative-audio splicing and its pos_mask
  fit_length              zero-pad / cut to the model's clip length
  extra_masking           keep a random window of the real audio

Images leave this module as uint8 [S, S, 3] (the model normalises them on device).
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageEnhance, UnidentifiedImageError

from denseav_jax import errors

# --------------------------------------------------------------------------- decoding


def open_image(source: str | bytes, *, path: str | None = None) -> Image.Image:
  """An image file (path or bytes) -> decoded RGB PIL image; BadExample if unreadable."""
  name = path or (source if isinstance(source, str) else '<bytes>')
  if isinstance(source, str):
    if not os.path.isfile(source):
      raise errors.BadExample('missing', name, 'no such file')
    empty, handle = os.path.getsize(source) == 0, source
  else:
    empty, handle = not source, io.BytesIO(source)
  if empty:
    raise errors.BadExample('empty', name, 'the file has 0 bytes')
  try:
    img = Image.open(handle)
    img.load()
    return img if img.mode == 'RGB' else img.convert('RGB')
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise errors.BadExample('undecodable', name, str(e).strip()[:200]) from None


def decode_ade_label(rgb: np.ndarray) -> np.ndarray:
  """ADE20K label PNG pixels uint8 [..., 3] -> int32 class ids (R // 10) * 256 + G."""
  rgb = np.asarray(rgb)
  return (rgb[..., 0].astype(np.int32) // 10) * 256 + rgb[..., 1].astype(np.int32)


# ------------------------------------------------------------------- evaluation transform


def resize_short_side(img: Image.Image, size: int, resample=Image.BILINEAR) -> Image.Image:
  """torchvision Resize(size) for PIL: short side -> size, long side int(size * long / short)."""
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
  """torchvision CenterCrop(size) for an image at least `size` on each side."""
  w, h = img.size
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def eval_image(img: Image.Image, size: int) -> np.ndarray:
  """Resize short side to `size` (bilinear, antialiased) + centre crop -> uint8 [S, S, 3]."""
  return np.asarray(center_crop(resize_short_side(img, size), size), np.uint8)


def eval_label(label: Image.Image, size: int) -> np.ndarray:
  """ADE20K label image -> int32 [S, S]: nearest resize of the short side + centre crop,
  then the class-id decoding (as the release: torchvision on the RGB PNG, then decode)."""
  label = label if label.mode == 'RGB' else label.convert('RGB')
  small = center_crop(resize_short_side(label, size, Image.NEAREST), size)
  return decode_ade_label(np.asarray(small))


# --------------------------------------------------------------------- training transform


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params: (top, left, height, width) of the crop.

  Up to 10 tries of an area fraction U(scale) and a log-uniform aspect ratio; then the
  largest centred crop within `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      i = int(rng.integers(0, height - h + 1))
      j = int(rng.integers(0, width - w + 1))
      return i, j, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def jitter_params(rng: np.random.Generator, strength=(0.2, 0.2, 0.2, 0.2)):
  """torchvision ColorJitter.get_params: (order of the 4 ops, brightness, contrast,
  saturation factors in [max(0, 1 - s), 1 + s], hue factor in [-s, s])."""
  b, c, s, h = strength
  order = rng.permutation(4)
  factors = tuple(float(rng.uniform(max(0.0, 1 - x), 1 + x)) if x > 0 else None
                  for x in (b, c, s))
  hue = float(rng.uniform(-h, h)) if h > 0 else None
  return order, factors + (hue,)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
  """torchvision's PIL hue shift: H channel (uint8) + hue_factor * 255, wrapping."""
  h, s, v = img.convert('HSV').split()
  shift = np.uint8(int(hue_factor * 255) % 256)
  np_h = np.asarray(h, np.uint8) + shift  # uint8 arithmetic wraps round the hue circle.
  return Image.merge('HSV', (Image.fromarray(np_h, 'L'), s, v)).convert('RGB')


def color_jitter(img: Image.Image, order, factors) -> Image.Image:
  """Applies brightness / contrast / saturation / hue (PIL ImageEnhance, as torchvision
  does for PIL images) in `order`; a None factor skips its op."""
  for op in order:
    f = factors[op]
    if f is None:
      continue
    if op == 0:
      img = ImageEnhance.Brightness(img).enhance(f)
    elif op == 1:
      img = ImageEnhance.Contrast(img).enhance(f)
    elif op == 2:
      img = ImageEnhance.Color(img).enhance(f)
    else:
      img = adjust_hue(img, f)
  return img


def grayscale(img: Image.Image) -> Image.Image:
  """torchvision rgb_to_grayscale(num_output_channels=3) for PIL: L, copied to 3 channels."""
  lum = img.convert('L')
  return Image.merge('RGB', (lum, lum, lum))


def train_image(img: Image.Image, size: int, rng: np.random.Generator, aug) -> np.ndarray:
  """The training image augmentation -> uint8 [S, S, 3].

  `aug`: a mapping with crop_scale, crop_ratio, hflip (probability), jitter (4 strengths)
  and grayscale (probability), e.g. config.data.aug.
  """
  w, h = img.size
  i, j, ch, cw = random_resized_crop_box(w, h, rng, tuple(aug['crop_scale']),
                                         tuple(aug['crop_ratio']))
  img = img.crop((j, i, j + cw, i + ch)).resize((size, size), Image.BILINEAR)
  if rng.random() < aug['hflip']:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  if any(float(x) > 0 for x in aug['jitter']):
    order, factors = jitter_params(rng, tuple(aug['jitter']))
    img = color_jitter(img, order, factors)
  if rng.random() < aug['grayscale']:
    img = grayscale(img)
  return np.asarray(img, np.uint8)


# ------------------------------------------------------------------------------- mixup

MIXUPS = ('quad', 'bg', 'patch')


def choose_mixup(rng: np.random.Generator, quad: float, bg: float, patch: float) -> str | None:
  """Draws 'quad', 'bg', 'patch' or None (no mixup) with the given probabilities."""
  total = quad + bg + patch
  if total > 1.0 + 1e-9:
    raise ValueError(f'quad_mixup + bg_mixup + patch_mixup = {total} > 1')
  u = rng.random()
  for name, p in zip(MIXUPS, (quad, bg, patch)):
    if u < p:
      return name
    u -= p
  return None


def half_size(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> [H // 2, W // 2, 3]: bilinear at scale 1/2 without antialiasing
  (torch F.interpolate(scale_factor=0.5)), i.e. the mean of each 2 x 2 block, rounded."""
  h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
  x = image[:h, :w].astype(np.uint16)
  total = x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]
  return ((total + 2) >> 2).astype(np.uint8)  # Round half up.


def quad_mixup(images, is_true) -> tuple[np.ndarray, np.ndarray]:
  """Four uint8 [S, S, 3] images (already in random slot order) -> a 2 x 2 grid of their
  half-size copies (slots: top-left, bottom-left, top-right, bottom-right, as the
  release's grid) and the uint8 [S, S] mask, 1 on the slots whose `is_true`."""
  s = images[0].shape[0]
  half = s // 2
  out = np.empty((2 * half, 2 * half, 3), np.uint8)
  mask = np.zeros((2 * half, 2 * half), np.uint8)
  for slot, (img, true) in enumerate(zip(images, is_true)):
    top, left = (slot % 2) * half, (slot // 2) * half
    out[top:top + half, left:left + half] = half_size(img)
    mask[top:top + half, left:left + half] = 1 if true else 0
  return out, mask


def bg_mixup(pos: np.ndarray, neg: np.ndarray, pos_is_background: bool, top: int,
             left: int) -> tuple[np.ndarray, np.ndarray]:
  """One image as background, a half-size copy of the other pasted at (top, left)
  (each in [0, S // 2)); mask 1 where the true image (`pos`) shows."""
  s_h, s_w = pos.shape[:2]
  bg, fg = (pos, neg) if pos_is_background else (neg, pos)
  out = bg.copy()
  mask = np.full((s_h, s_w), 1 if pos_is_background else 0, np.uint8)
  small = half_size(fg)
  out[top:top + small.shape[0], left:left + small.shape[1]] = small
  mask[top:top + small.shape[0], left:left + small.shape[1]] = 0 if pos_is_background else 1
  return out, mask


def patch_mixup(pos: np.ndarray, neg: np.ndarray, choice: np.ndarray,
                patch: int) -> tuple[np.ndarray, np.ndarray]:
  """Per patch x patch block, the true image where `choice` [S/p, S/p] is 1, else the
  other; mask = the choice upsampled to pixels."""
  s_h, s_w = pos.shape[:2]
  if s_h % patch or s_w % patch:
    raise ValueError(f'patch_mixup: patch size {patch} does not divide the image '
                     f'{s_h}x{s_w}')
  mask = np.repeat(np.repeat(choice.astype(np.uint8), patch, 0), patch, 1)
  return np.where(mask[..., None] == 1, pos, neg), mask


# ------------------------------------------------------------------------------- audio


def random_subclip(x: np.ndarray, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
  """A random piece of `x` (the release's choice: start uniform in [0, n - low], then a
  length uniform in [low, min(high, n - start)]); `x` itself when shorter than `low`."""
  n = len(x)
  if n < low or n == 0:
    return x
  start = int(rng.integers(0, n - low + 1))
  length = int(rng.integers(low, min(high, n - start) + 1))
  return x[start:start + length]


def splice_weights(length: int, easing: int) -> np.ndarray:
  """The original clip's weight over a splice of `length` samples: a raised-cosine fade
  from 1 to 0 over `easing` samples, 0, then a fade from 0 back to 1."""
  fade = 0.5 * (1.0 + np.cos(np.pi * np.linspace(0.0, 1.0, easing)))
  return np.concatenate([fade, np.zeros(length - 2 * easing), 1.0 - fade]).astype(np.float32)


def splice(x: np.ndarray, piece: np.ndarray, start: int,
           easing: int) -> tuple[np.ndarray, np.ndarray]:
  """Replaces x[start:start + len(piece)] by `piece`, cross-faded with raised-cosine
  ramps of `easing` samples. Returns (spliced float32, pos_mask float32 = x's weight)."""
  n = len(piece)
  if not (0 <= start and start + n < len(x)):
    raise ValueError(f'splice of {n} samples at {start} does not fit in {len(x)}')
  if not 0 < easing <= n // 2:
    raise ValueError(f'splice easing {easing} must be in [1, {n // 2}]')
  w = splice_weights(n, easing)
  out = np.asarray(x, np.float32).copy()
  out[start:start + n] = w * out[start:start + n] + (1.0 - w) * piece
  pos = np.ones(len(x), np.float32)
  pos[start:start + n] = w
  return out, pos


def plan_negative_splice(length: int, negative: np.ndarray, rng: np.random.Generator,
                         sample_rate: int, seconds=(1.0, 4.0)):
  """Where and what negative-audio splicing puts into a clip of `length` samples
  (docs/data.md#negative-audio-splicing): a random piece of `negative` (seconds[0]..seconds[1]
  long, or all of it if shorter) at a random position where it fits inside, with ramps of
  e = min(len / 2, max(len / 4, 0.5 s)). Returns (start, piece, easing), or None when the
  piece does not fit (or is too short to ramp)."""
  piece = random_subclip(negative, rng, int(seconds[0] * sample_rate),
                         int(seconds[1] * sample_rate))
  n = len(piece)
  easing = min(n // 2, max(n // 4, sample_rate // 2))
  if length - n <= 0 or easing < 1:
    return None
  return int(rng.integers(0, length - n)), piece, easing  # Start in [0, length - n - 1].


def apply_splice(audio: np.ndarray, pos_mask: np.ndarray, start: int, piece: np.ndarray,
                 easing: int) -> None:
  """Writes a planned splice into `audio` and its weights into `pos_mask`, in place; the
  arrays may be shorter than the clip the splice was planned for (a clip cut to the model's
  length): the part beyond them is dropped, as cutting after splicing would."""
  end = min(start + len(piece), len(audio))
  if end <= start:
    return
  w = splice_weights(len(piece), easing)[:end - start]
  audio[start:end] = w * audio[start:end] + (1.0 - w) * piece[:end - start]
  pos_mask[start:end] = w


def negative_splice(x: np.ndarray, negative: np.ndarray, rng: np.random.Generator,
                    sample_rate: int, seconds=(1.0, 4.0)) -> tuple[np.ndarray, np.ndarray]:
  """Negative-audio splicing of a whole clip: (spliced audio, pos_mask), pos_mask all ones
  when nothing is spliced (see plan_negative_splice)."""
  out = np.asarray(x, np.float32).copy()
  pos = np.ones(len(x), np.float32)
  plan = plan_negative_splice(len(x), negative, rng, sample_rate, seconds)
  if plan is not None:
    apply_splice(out, pos, *plan)
  return out, pos


def fit_length(x: np.ndarray, length: int) -> tuple[np.ndarray, int]:
  """Zero-pads or cuts (keeping the start) to `length`; returns (float32 [length], valid)."""
  n = min(len(x), length)
  out = np.zeros(length, np.float32)
  out[:n] = x[:n]
  return out, n


def extra_masking(audio: np.ndarray, valid: int, rng: np.random.Generator,
                  min_samples: int) -> tuple[int, int]:
  """Keeps a random window of the real audio (docs/data.md#training-transforms): with
  probability 1/2, when there are more than `min_samples` valid samples, a window of
  length U[min_samples, valid) at a random start; `audio` is zeroed outside it in place.
  Returns the valid window (start, end)."""
  if valid <= min_samples or rng.random() >= 0.5:
    return 0, valid
  size = min(int(rng.integers(min_samples, valid)), len(audio))
  start = 0 if size == len(audio) else int(rng.integers(0, valid - size))
  audio[:start] = 0.0
  audio[start + size:] = 0.0
  return start, start + size
