"""Model-ready examples from a data source: training (augmentation, mixup, negative-audio
splicing, extra masking) and evaluation (docs/data.md#training-transforms).

`Spec.from_config(config)` gathers the knobs; then

  train_example(source, index, rng, spec) -> {image uint8 [S, S, 3], audio float32 [L],
      audio_len int32, source int32, + audio_start int32 (extra masking), pos_mask float32 [L]
      (negative audio), image_mask uint8 [S, S] (mixup)}
  eval_example(source, index, spec) -> {image, audio, audio_len, source, + class_map int32
      [S, S], prompt_class, prompt_start, prompt_end (prompted sets)}

`rng` decides everything random (the frame, crops, jitter, partners, splice, window), so an
example is a pure function of (index, rng). Unusable inputs raise errors.BadExample.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from denseav_jax import errors
from denseav_jax.data import transforms


@dataclasses.dataclass(frozen=True)
class Spec:
  """The fields of config.input and config.data an example is made with (from_config)."""
  image_size: int
  audio_samples: int
  sample_rate: int
  image_aug: bool
  aug: tuple  # (key, value) pairs of config.data.aug.
  quad_mixup: float
  bg_mixup: float
  patch_mixup: float
  patch_size: int
  neg_audio: bool
  extra_audio_masking: bool
  min_audio_fraction: float

  @classmethod
  def from_config(cls, config) -> 'Spec':
    d, i = config.data, config.input
    spec = cls(image_size=int(i.image_size), audio_samples=int(i.audio_samples),
               sample_rate=int(i.sample_rate), image_aug=bool(d.image_aug),
               aug=tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                                for k, v in d.aug.items())),
               quad_mixup=float(d.quad_mixup), bg_mixup=float(d.bg_mixup),
               patch_mixup=float(d.patch_mixup), patch_size=int(d.patch_size),
               neg_audio=bool(d.neg_audio), extra_audio_masking=bool(d.extra_audio_masking),
               min_audio_fraction=float(d.min_audio_fraction))
    spec.validate()
    return spec

  @property
  def mixup(self) -> bool:
    return self.quad_mixup + self.bg_mixup + self.patch_mixup > 0

  @property
  def augment(self) -> dict[str, Any]:
    return dict(self.aug)

  def train_keys(self) -> tuple[str, ...]:
    """The keys of a training example (and batch), in a fixed order."""
    keys = ('image', 'audio', 'audio_len', 'source')
    if self.extra_audio_masking:
      keys += ('audio_start',)
    if self.neg_audio:
      keys += ('pos_mask',)
    if self.mixup:
      keys += ('image_mask',)
    return keys

  def train_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Each training key's per-example (shape, dtype), as train_example makes them (what
    an ahead-of-time compile needs instead of data)."""
    s, n = self.image_size, self.audio_samples
    every = dict(image=((s, s, 3), np.uint8), audio=((n,), np.float32),
                 audio_len=((), np.int32), source=((), np.int32), audio_start=((), np.int32),
                 pos_mask=((n,), np.float32), image_mask=((s, s), np.uint8))
    return {k: every[k] for k in self.train_keys()}

  def validate(self) -> None:
    total = self.quad_mixup + self.bg_mixup + self.patch_mixup
    if min(self.quad_mixup, self.bg_mixup, self.patch_mixup) < 0 or total > 1 + 1e-9:
      raise errors.DataError(
          f'data.quad_mixup + bg_mixup + patch_mixup = {total}: each must be >= 0 and the sum '
          '<= 1 (the rest of the examples get no mixup)')
    if self.quad_mixup + self.bg_mixup > 0 and self.image_size % 2:
      raise errors.DataError(f'quad/bg mixup halve the image: input.image_size='
                             f'{self.image_size} must be even')
    if self.patch_mixup > 0 and self.image_size % self.patch_size:
      raise errors.DataError(f'data.patch_size={self.patch_size} does not divide '
                             f'input.image_size={self.image_size}')
    if self.image_aug:
      a = self.augment
      missing = {'crop_scale', 'crop_ratio', 'hflip', 'jitter', 'grayscale'} - set(a)
      if missing:
        raise errors.DataError(f'data.aug lacks {sorted(missing)}')
      lo, hi = a['crop_scale']
      if not 0 < lo <= hi <= 1:
        raise errors.DataError(f'data.aug.crop_scale={a["crop_scale"]}: need 0 < low <= high <= 1')


# ---------------------------------------------------------------------------- pieces


def _pil(image) -> Image.Image:
  return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))


def _image(image, rng, spec: Spec) -> np.ndarray:
  """A decoded image -> uint8 [S, S, 3] (training augmentation or the evaluation transform)."""
  s = spec.image_size
  if spec.image_aug:
    return transforms.train_image(_pil(image), s, rng, spec.augment)
  if isinstance(image, np.ndarray) and image.shape == (s, s, 3):
    return image  # Already model-sized (the synthetic world).
  return transforms.eval_image(_pil(image), s)


def _route(source, index, rng):
  if hasattr(source, 'route'):
    return source.route(index, rng)
  return source, int(index), None


def _where(source, index) -> str:
  return source.where(index) if hasattr(source, 'where') else f'example #{index}'


def _check_length(valid: int, spec: Spec, source, index) -> None:
  if valid < spec.min_audio_fraction * spec.audio_samples:
    raise errors.BadExample(
        'short_audio', _where(source, index),
        f'{valid} valid samples, below data.min_audio_fraction={spec.min_audio_fraction} of '
        f'the {spec.audio_samples}-sample clip')


def _mix(source, index, image, rng, spec: Spec):
  """The mixup of example `index`'s augmented `image` with partners from `source`."""
  kind = transforms.choose_mixup(rng, spec.quad_mixup, spec.bg_mixup, spec.patch_mixup)
  s = spec.image_size
  if kind is None:
    return image, np.ones((s, s), np.uint8)
  partner = lambda j: _image(source.read(j, rng)['image'], rng, spec)
  if kind == 'quad':
    indices = [index] + [int(j) for j in rng.integers(0, len(source), 3)]
    images = [image] + [partner(j) for j in indices[1:]]
    perm = rng.permutation(4)
    return transforms.quad_mixup([images[p] for p in perm], [indices[p] == index for p in perm])
  other = partner(int(rng.integers(len(source))))
  if kind == 'bg':
    pos_is_background = not rng.random() > 0.5  # The release: background = other if rand > .5.
    top, left = int(rng.integers(0, s // 2)), int(rng.integers(0, s // 2))
    return transforms.bg_mixup(image, other, pos_is_background, top, left)
  choice = rng.integers(0, 2, (s // spec.patch_size, s // spec.patch_size))
  return transforms.patch_mixup(image, other, choice, spec.patch_size)


# ---------------------------------------------------------------------------- examples


def train_example(source, index: int, rng: np.random.Generator, spec: Spec) -> dict[str, Any]:
  """Training example `index` of `source` (see the module doc)."""
  src, index, label = _route(source, index, rng)
  ex = src.read(index, rng)
  length = len(ex['audio'])
  out: dict[str, Any] = {}
  plan = None
  if spec.neg_audio:
    negative = src.audio(int(rng.integers(len(src))))
    plan = transforms.plan_negative_splice(length, negative, rng, spec.sample_rate)
  audio, valid = transforms.fit_length(ex['audio'], spec.audio_samples)
  if spec.neg_audio:  # Spliced after the cut: the same as splicing the whole clip, then cutting.
    pos = np.zeros(spec.audio_samples, np.float32)
    pos[:valid] = 1.0
    if plan is not None:
      transforms.apply_splice(audio, pos, *plan)
    out['pos_mask'] = pos
  start, end = 0, valid
  if spec.extra_audio_masking:
    start, end = transforms.extra_masking(audio, valid, rng, spec.sample_rate // 2)
    out['audio_start'] = np.int32(start)
  _check_length(end - start, spec, src, index)
  image = _image(ex['image'], rng, spec)
  if spec.mixup:
    image, out['image_mask'] = _mix(src, index, image, rng, spec)
  out.update(image=image, audio=audio, audio_len=np.int32(end),
             source=np.int32(ex.get('source', 0) if label is None else label))
  return {k: out[k] for k in spec.train_keys()}


def eval_example(source, index: int, spec: Spec, rng: np.random.Generator) -> dict[str, Any]:
  """Evaluation example `index`: the evaluation transforms, no augmentation."""
  ex = source.read(index, rng)
  audio, valid = transforms.fit_length(np.asarray(ex['audio'], np.float32), spec.audio_samples)
  _check_length(valid, spec, source, index)
  s = spec.image_size
  image = ex['image']
  if not (isinstance(image, np.ndarray) and image.shape == (s, s, 3)):
    image = transforms.eval_image(_pil(image), s)
  out = dict(image=image, audio=audio, audio_len=np.int32(valid),
             source=np.int32(ex.get('source', 0)), index=np.int64(index))
  if 'label' in ex:  # Prompted segmentation (ADE20K).
    out['class_map'] = transforms.eval_label(ex['label'], s)
    out['prompt_class'] = np.int32(ex['class_id'])
    start, end = ex['timing'] if 'timing' in ex else (0.0, 0.0)
    out['prompt_start'], out['prompt_end'] = np.float32(start), np.float32(end)
  return out
