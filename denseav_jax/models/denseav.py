"""DenseAV: image tower + audio tower + aligners + learned audio CLS + calibrator.

A flax.linen module used as a pure function of (params, inputs):

  model = build_model(config)
  params = model.init(rng, images, audio, audio_len)['params']
  out = model.apply({'params': params}, images, audio, audio_len, train=True,
                    rngs={'dropout': key})

Outputs are channels-last: image_feats [B, H, W, C], audio_feats [B, F, T, C],
audio_mask [B, T] (bool), image_cls / audio_cls [B, C], cal (the calibrator weight).
With sim_agg='simpool' the model owns a shared SimPool: `method=model.pool` maps any
[B, ..., C] feature map to [B, C] (the loss and the evaluator call it on the maps they score).
With loss_type != 'nce' also cal_bias (the calibrator's additive bias, release `sim_cal.b`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from denseav_jax import errors
from denseav_jax.models import aligners
from denseav_jax.models import audio as audio_lib
from denseav_jax.models import image as image_lib
from denseav_jax.models import layers
from denseav_jax.models import preprocess
from denseav_jax.models import simpool as simpool_lib


class DenseAV(nn.Module):
  image_cfg: dict[str, Any]
  audio_cfg: dict[str, Any]
  code_dim: int = 384
  image_aligner: str = 'image_linear'
  audio_aligner: str = 'audio_sa_3_3_pool_2'
  aligner_heads: int = 6
  aligner_eps: float = 1e-4
  dtype: Any = jnp.float32  # Compute dtype (parameters stay float32).
  image_grad: bool = True
  aligner_remat: str = 'none'  # 'none' | 'full' | 'dots' (layers.REMAT_POLICIES).
  cal_init: float = 1.0
  vad: bool = False
  vad_frame: int = 320
  vad_threshold_db: float = 30.0
  sim_agg: str = 'misa'
  loss_type: str = 'nce'

  def setup(self):
    self.image_model = image_lib.ImageTower(**self.image_cfg, dtype=self.dtype)
    self.audio_model = audio_lib.AudioTower(**self.audio_cfg, dtype=self.dtype)
    for kind, allowed, key in ((self.image_aligner, aligners.IMAGE_ALIGNERS, 'image_aligner'),
                               (self.audio_aligner, aligners.AUDIO_ALIGNERS, 'audio_aligner')):
      if kind not in allowed:
        raise ValueError(f'model.{key}={kind!r} is not one of {list(allowed)}')
    self.image_aligner_mod = aligners.build(self.image_aligner, self.code_dim,
                                            eps=self.aligner_eps, dtype=self.dtype,
                                            name='image_aligner')
    self.audio_aligner_mod = aligners.build(self.audio_aligner, self.code_dim,
                                            heads=self.aligner_heads, eps=self.aligner_eps,
                                            dtype=self.dtype, name='audio_aligner')
    self.audio_cls = self.param('audio_cls', nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ('embed',)), (self.audio_cfg['width'],))
    # The calibrator's log-temperature (release: `sim_cal.w`).
    self.sim_cal_w = self.param('sim_cal_w', nn.initializers.constant(np.log(self.cal_init)),
                                ())
    # Release: SimilarityCalibrator(use_bias=True) for every loss type but nce (`sim_cal.b`).
    if self.loss_type != 'nce':
      self.sim_cal_b = self.param('sim_cal_b', nn.initializers.zeros, ())
    # Release: SimPoolAggregator owns one SimPool(dim, gamma=1.25), shared by both modalities.
    if self.sim_agg == 'simpool':
      self.simpool = simpool_lib.SimPool(self.code_dim, gamma=1.25)

  def _align(self, which: str, dense, cls, train: bool):
    """self.<which>(dense, cls), rematerialised in the backward pass with aligner_remat."""
    if self.aligner_remat in ('none', '', None):
      return getattr(self, which)(dense, cls, train=train)
    fn = nn.checkpoint(lambda mdl, d, c: getattr(mdl, which)(d, c, train=train),
                       policy=layers.REMAT_POLICIES[self.aligner_remat])
    return fn(self, dense, cls)

  def embed_image(self, images, train: bool = False):
    """images: uint8 [B, S, S, 3] -> (feats [B, H, W, C], cls [B, C])."""
    dense, cls = self.image_model(preprocess.normalize_images(images), train=train)
    feats, cls = self._align('image_aligner_mod', dense, cls, train)
    if not self.image_grad:  # Release quirk: the image branch runs under no_grad.
      feats, cls = jax.lax.stop_gradient(feats), jax.lax.stop_gradient(cls)
    return feats, cls

  def embed_audio(self, audio, audio_len, train: bool = False, mask_rng=None,
                  audio_start=None):
    """audio: float [B, L] raw waveform, audio_len: [B] end of the valid samples (and
    audio_start [B] their start, default 0) -> (feats [B, 1, T, C], cls [B, C], mask [B, T])."""
    wave = preprocess.normalize_waveform(audio.astype(jnp.float32))
    dense = self.audio_model(wave, train=train)
    cls = jnp.broadcast_to(self.audio_cls, (dense.shape[0], dense.shape[-1]))
    feats, cls = self._align('audio_aligner_mod', dense, cls, train)
    mask = preprocess.audio_mask(
        audio.astype(jnp.float32), audio_len, feats.shape[2], vad=self.vad,
        vad_frame=self.vad_frame, vad_threshold_db=self.vad_threshold_db, rng=mask_rng,
        audio_start=audio_start)
    return feats, cls, mask

  def pool(self, feats):
    """SimPool (sim_agg='simpool' only): feats [B, ..., C] (audio [B, F, T, C] or image
    [B, H, W, C]) -> [B, C] float32. The value shift uses the min over the whole batch."""
    if self.sim_agg != 'simpool':
      raise ValueError(f'pool() needs sim_agg="simpool", not {self.sim_agg!r}')
    return self.simpool(feats)

  def calibration(self):
    """The calibrator weight w = clamp(exp(theta), 0.01, 100) (docs/method.md#calibrator)."""
    return jnp.clip(jnp.exp(self.sim_cal_w), 0.01, 100.0)

  def __call__(self, images, audio, audio_len, train: bool = False, mask_rng=None,
               audio_start=None):
    image_feats, image_cls = self.embed_image(images, train)
    audio_feats, audio_cls, audio_mask = self.embed_audio(audio, audio_len, train, mask_rng,
                                                          audio_start)
    out = dict(image_feats=image_feats, image_cls=image_cls, audio_feats=audio_feats,
               audio_cls=audio_cls, audio_mask=audio_mask, cal=self.calibration())
    if self.loss_type != 'nce':
      out['cal_bias'] = self.sim_cal_b
    if self.sim_agg == 'simpool' and self.is_initializing():
      # Only creates the SimPool's parameters: the loss pools the maps it scores (the
      # train-pooled image map), so pooling here would be wasted work in every step.
      self.pool(audio_feats)
    return out


# Model keys added after runs and converted models first saved their config.json, with the
# value that means what those configs did (configs/default.py holds the same defaults;
# tests/configs/test_saved_configs.py checks): checkpoint/model_io.py fills them in.
ADDED_MODEL_KEYS = {'aligner_remat': 'none', 'tower_microbatches': 1}

# Config keys of model.image / model.audio that are not tower constructor fields.
_NOT_TOWER_FIELDS = ('lora', 'finetune', 'pos_grid')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _tower_kwargs(cfg: ml_collections.ConfigDict, key: str) -> dict[str, Any]:
  out = {k: v for k, v in cfg.items() if k not in _NOT_TOWER_FIELDS}
  for k in ('conv_kernels', 'conv_strides'):
    if k in out:
      out[k] = tuple(out[k])
  out['lora'] = layers.LoraSpec.from_config(cfg.lora)
  return out


def _one_of(key: str, value, allowed) -> None:
  if value not in allowed:
    raise errors.ConfigError(f'config.{key}={value!r} is not one of {list(allowed)}')


def _positive(key: str, value) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise errors.ConfigError(f'config.{key}={value!r} must be an integer >= 1')


def _divides(key: str, value: int, of_key: str, of: int) -> None:
  if of % value:
    raise errors.ConfigError(f'config.{key}={value} does not divide config.{of_key}={of}: '
                             f'choose a divisor of {of}')


def check(config: ml_collections.ConfigDict) -> None:
  """The model's config keys (config.model, config.input) can build a model: raises
  errors.ConfigError naming the key, its value and what would work. Runs before any trace,
  so a bad value never reaches a compile."""
  m, i = config.model, config.input
  for key in ('input.image_size', 'input.audio_samples', 'input.sample_rate',
              'model.code_dim', 'model.num_heads', 'model.aligner_heads'):
    _positive(key, config[key.split('.')[0]][key.split('.')[1]])
  if m.code_dim % m.num_heads:
    raise errors.ConfigError(
        f'config.model.num_heads={m.num_heads} does not divide '
        f'config.model.code_dim={m.code_dim} (each head takes code_dim / num_heads channels): '
        f'choose a divisor of {m.code_dim} or change model.code_dim')
  _one_of('model.dtype', m.dtype, sorted(DTYPES))
  _one_of('model.aligner_remat', m.aligner_remat, ('none', *layers.REMAT_POLICIES))
  n = m.tower_microbatches
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise errors.ConfigError(f'config.model.tower_microbatches={n!r} must be an integer >= 1 '
                             '(1 = off)')
  _one_of('model.image_aligner', m.image_aligner, aligners.IMAGE_ALIGNERS)
  _one_of('model.audio_aligner', m.audio_aligner, aligners.AUDIO_ALIGNERS)
  for tower in ('image', 'audio'):
    t = m[tower]
    for key in ('width', 'depth', 'num_heads'):
      _positive(f'model.{tower}.{key}', t[key])
    _one_of(f'model.{tower}.remat', t.remat, ('none', *layers.REMAT_POLICIES))
    if int(t.lora.rank) < 0:
      raise errors.ConfigError(f'config.model.{tower}.lora.rank={t.lora.rank} must be >= 0 '
                               '(0 = no LoRA)')
    if int(t.lora.rank) and not tuple(t.lora.targets):
      raise errors.ConfigError(f'config.model.{tower}.lora.rank={t.lora.rank} but '
                               f'model.{tower}.lora.targets is empty: name the layers to '
                               'adapt, or set the rank to 0')
  im, au = m.image, m.audio
  _one_of('model.image.mixer', im.mixer, ('attention', 'dwconv'))
  _one_of('model.image.token_type', im.token_type, ('token', 'key'))
  if im.token_type == 'key' and im.mixer != 'attention':
    raise errors.ConfigError("config.model.image.token_type='key' needs "
                             "model.image.mixer='attention' (got "
                             f'{im.mixer!r}): use token_type=\'token\' or the attention mixer')
  _positive('model.image.patch_size', im.patch_size)
  _divides('model.image.patch_size', im.patch_size, 'input.image_size', i.image_size)
  if im.mixer == 'attention':
    _divides('model.image.num_heads', im.num_heads, 'model.image.width', im.width)
  _one_of('model.audio.frontend', au.frontend, ('conv', 'logmel'))
  _one_of('model.audio.feat_extract_norm', au.feat_extract_norm, ('layer', 'group'))
  if len(tuple(au.conv_kernels)) != len(tuple(au.conv_strides)):
    raise errors.ConfigError(
        f'config.model.audio.conv_kernels={tuple(au.conv_kernels)} and conv_strides='
        f'{tuple(au.conv_strides)} differ in length: give one stride per kernel')
  _divides('model.audio.num_heads', au.num_heads, 'model.audio.width', au.width)
  _positive('model.audio.pos_conv_groups', au.pos_conv_groups)
  _divides('model.audio.pos_conv_groups', au.pos_conv_groups, 'model.audio.width', au.width)


def build_model(config: ml_collections.ConfigDict) -> DenseAV:
  """Builds the model from a run config (uses `config.model`, `config.sim`, `config.input`);
  `check(config)` first, so a bad value is an errors.ConfigError naming its key."""
  check(config)
  m = config.model
  image_cfg = _tower_kwargs(m.image, 'image')
  # The stored positional table's grid: DINO's is 28 x 28 (224 / 8) whatever size we feed;
  # 0 = the training image size / patch.
  pos_grid = int(m.image.pos_grid)
  image_cfg['pos_grid'] = pos_grid or config.input.image_size // m.image.patch_size
  audio_cfg = _tower_kwargs(m.audio, 'audio')
  audio_cfg['sample_rate'] = config.input.sample_rate
  return DenseAV(
      image_cfg=image_cfg, audio_cfg=audio_cfg, code_dim=m.code_dim,
      image_aligner=m.image_aligner, audio_aligner=m.audio_aligner,
      aligner_heads=m.aligner_heads, aligner_eps=m.aligner_eps,
      image_grad=m.image_grad, aligner_remat=m.aligner_remat, cal_init=config.sim.cal_init,
      vad=config.sim.vad, vad_frame=int(config.input.sample_rate * config.sim.vad_frame_ms / 1000),
      vad_threshold_db=config.sim.vad_threshold_db, sim_agg=config.sim.agg,
      loss_type=config.loss.type, dtype=DTYPES[m.dtype])


class Arch:
  """A model as a `functools.cache` key: equal when their reprs (which list every field)
  are. Flax modules with list or dict fields are not hashable; jitted functions built per
  architecture are cached on Arch(model)."""

  def __init__(self, model):
    self.model, self.key = model, repr(model)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, Arch) and other.key == self.key
