"""The loss the trainer optimises: the contrastive loss plus the weighted regularisers,

    total = contrastive + sum_name loss.weights.NAME * term_NAME

every term logged as train/loss_NAME whether or not it is weighted in.
"""

from collections.abc import Mapping
from typing import Any

import jax

from denseav_jax.losses import contrastive
from denseav_jax.losses import regularisers
from denseav_jax import errors
from denseav_jax.similarity import dense

SAMPLED = ('silence_l1', 'silence_l2', 'nonneg_pressure')  # Terms drawing loss.num_samples.


def check(config) -> None:
  """config.loss's keys can work with the model and the data the config describes: raises
  errors.ConfigError naming the key, its value and what to change, before anything is
  traced (the same conditions `loss_terms` enforces on its inputs)."""
  loss = config.loss
  contrastive.check_type(loss.type)
  contrastive.check_leak(float(loss.leak))
  weights = {name: float(loss.weights[name]) for name in regularisers.REGULARISERS}
  for name, w in weights.items():
    if not w >= 0:
      raise errors.ConfigError(f'config.loss.weights.{name}={w} must be >= 0 (0 turns the '
                               'term off)')
  if any(weights[n] for n in SAMPLED) and int(loss.num_samples) < 1:
    raise errors.ConfigError(f'config.loss.num_samples={loss.num_samples} must be >= 1 while '
                             f'{", ".join(f"loss.weights.{n}" for n in SAMPLED)} are on')
  d = config.data
  needs = (('neg_audio', bool(d.neg_audio), 'config.data.neg_audio=True (the spliced-in '
            'negative audio it penalises)'),
           ('mixup', float(d.quad_mixup) + float(d.bg_mixup) + float(d.patch_mixup) > 0,
            'image mixup in the data (config.data.quad_mixup > 0, e.g. 0.1)'),
           ('disentangle', int(config.model.num_heads) % 2 == 0,
            f'an even config.model.num_heads (got {config.model.num_heads})'))
  for name, ok, what in needs:
    if weights[name] and not ok:
      raise errors.ConfigError(f'config.loss.weights.{name}={weights[name]} needs {what}; '
                               'or set the weight to 0')
  if needs[1][1]:  # Mixup's image mask is average-pooled onto the training feature grid.
    size, patch = int(config.input.image_size), int(config.model.image.patch_size)
    pool = max(int(config.model.train_image_pool), 1)
    grid = size // patch // pool
    if grid < 1 or size % grid:
      raise errors.ConfigError(
          f'config.model.train_image_pool={pool}: the training feature grid of {grid}x{grid} '
          f'does not tile input.image_size={size}, onto which data mixup pools its image '
          f'mask: choose a pool that divides {size // patch}')


def loss_terms(score_matrix, out: Mapping[str, Any], config_loss, *, num_heads: int,
               nonneg: bool, use_cls: bool, cal_init: float, rng=None, pos_mask=None,
               image_mask=None, source=None, bias=None):
  """The full DenseAV loss: (total, terms).

  out: the model's outputs: audio_feats [B, F, T, C], audio_mask [B, T], image_feats
  [B, H, W, C] (already pooled for training), audio_cls / image_cls [B, C], cal (w).
  config_loss: the config's `loss` section (type, margin, leak, weights, num_samples).
  pos_mask float [B, T], image_mask float [B, H, W] (feature grid), source int [B]: optional
  data inputs of neg_audio, mixup and disentangle. bias: the non-'nce' calibrator bias.

  total = contrastive + sum(weight * term). terms holds the contrastive value under the loss
  type's name and every regulariser that can be computed (weighted or not, for logging);
  a skipped sampled term (too few silent steps / no negative audio) is reported as 0.
  Terms that cannot be computed are left out: neg_audio without pos_mask, mixup without
  image_mask, disentangle without source or with odd K, specialization with K == 1 (the
  release skips it silently, so a weight there adds nothing). A *weighted* term that
  cannot be computed raises errors.ConfigError (a ValueError) naming its config key and the
  missing input; `check(config)` finds the config's own cases before anything is traced.
  """
  loss_type = config_loss.type
  contrastive.check_type(loss_type)
  weights = {name: float(config_loss.weights[name]) for name in regularisers.REGULARISERS}
  num_samples = int(config_loss.num_samples)

  def need(name, ok, what):
    if not ok and weights[name]:
      raise errors.ConfigError(f'loss.weights.{name}={weights[name]} needs {what}')
    return ok

  has_pos = need('neg_audio', pos_mask is not None,
                 'a pos_mask (enable negative-audio splicing in the data)')
  has_img = need('mixup', image_mask is not None,
                 'an image_mask (enable quad mixup in the data)')
  has_src = need('disentangle', source is not None,
                 "a per-example source label (the data's 'source': 0 speech, 1 sound)")
  even_k = need('disentangle', num_heads % 2 == 0,
                f'an even model.num_heads (got {num_heads})')
  has_rng = rng is not None
  for name in SAMPLED:
    need(name, has_rng, 'an rng key')
  if use_cls and (out.get('audio_cls') is None or out.get('image_cls') is None):
    raise ValueError('sim.use_cls=True needs audio_cls and image_cls in the model outputs')

  audio_feats, image_feats = out['audio_feats'], out['image_feats']
  audio_mask, cal = out['audio_mask'], out['cal']
  terms = {}
  terms[loss_type] = contrastive.contrastive_loss(
      score_matrix, cal, loss_type, margin=float(config_loss.margin),
      leak=float(config_loss.leak), bias=bias)

  p = dense.matched_volume(audio_feats, image_feats, num_heads, nonneg,
                           audio_mask=audio_mask,
                           audio_cls=out['audio_cls'] if use_cls else None,
                           image_cls=out['image_cls'] if use_cls else None)
  terms['tv'] = regularisers.tv(p)
  if has_pos:
    terms['neg_audio'], _ = regularisers.neg_audio(p, audio_mask, pos_mask)
  if has_img:
    terms['mixup'] = regularisers.mixup(p, image_mask)
  if has_rng:
    rng_silence, rng_nonneg = jax.random.split(rng)
    sil, _ = regularisers.silence(audio_feats, audio_mask, image_feats, num_heads, nonneg,
                                  rng_silence, num_samples)
    terms['silence_l1'], terms['silence_l2'] = sil['l1'], sil['l2']
    terms['nonneg_pressure'] = regularisers.nonneg_pressure(
        audio_feats, image_feats, num_heads, rng_nonneg, num_samples)
  terms['cal_balance'] = regularisers.cal_balance(cal, cal_init)
  if num_heads > 1:
    terms['specialization'] = regularisers.specialization(p)
  if has_src and even_k:
    terms['disentangle'] = regularisers.disentangle(p, source)

  total = terms[loss_type]
  for name in regularisers.REGULARISERS:
    if weights[name] and name in terms:
      total = total + weights[name] * terms[name]
  return total, terms
