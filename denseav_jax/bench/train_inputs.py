"""bench.train's step set-up: the benchmark's config, its random batch, the JAX step's first
random draws (for the torch side's parity step) and the torch model of the same shapes.

Apart from bench/train.py so that the command (flags, the timed loop, the table) reads on
its own; what the step computes is described in bench/train.py's docstring.
"""

import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.losses import regularisers
from denseav_jax.data import pipeline
from denseav_jax.models import preprocess

DROPOUT_KEYS = ('dropout', 'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
                'layerdrop', 'mask_time_prob')


def bench_config(args):
  """configs/denseav.py at fp32 on a 1-device mesh, with the flags' changes."""
  c = configs.load('configs/denseav.py')
  c.model.dtype = 'float32'
  c.batch_size = args.batch
  c.mesh = (('data', 1),)
  c.mesh_dcn = ()
  c.seed = args.seed
  c.init_from = ''
  if args.dropout == 'off':
    c.model.image.lora.dropout = 0.0
    c.model.audio.update({k: 0.0 for k in DROPOUT_KEYS})
  if args.small:
    c.input.update(image_size=32, audio_samples=16_000)
    c.model.code_dim = 24
    c.model.image.update(width=64, depth=2, num_heads=2, pos_grid=4)
    c.model.audio.update(conv_channels=32, width=64, depth=2, num_heads=4, mlp_dim=128)
  if args.image_depth:
    c.model.image.depth = args.image_depth
  if args.audio_depth:
    c.model.audio.depth = args.audio_depth
  _check_release_step(c)
  return c


def _check_release_step(c):
  """The torch step restates only the release's settings; refuse others."""
  want = {'sim.agg': (c.sim.agg, 'misa'), 'sim.head_agg': (c.sim.head_agg, 'max_elementwise'),
          'sim.use_cls': (c.sim.use_cls, False), 'sim.nonneg': (c.sim.nonneg, False),
          'sim.vad': (c.sim.vad, False), 'sim.mask_silence': (c.sim.mask_silence, True),
          'loss.type': (c.loss.type, 'nce'), 'loss.margin': (c.loss.margin, 0.0),
          'loss.leak': (c.loss.leak, 0.0), 'model.image_grad': (c.model.image_grad, False),
          'model.image_aligner': (c.model.image_aligner, 'image_linear'),
          'model.audio_aligner': (c.model.audio_aligner, 'audio_sa_3_3_pool_2'),
          'model.image.mixer': (c.model.image.mixer, 'attention'),
          'model.audio.frontend': (c.model.audio.frontend, 'conv'),
          'model.audio.norm_first': (c.model.audio.norm_first, True)}
  bad = [f'{k}={got!r} (needs {need!r})' for k, (got, need) in want.items() if got != need]
  if c.model.num_heads > 1 and (c.loss.weights.specialization or c.loss.weights.disentangle):
    bad.append('specialization/disentangle weights (not in the torch step)')
  if bad:
    raise errors.UserError('bench.train re-states the release step only: ' + '; '.join(bad))


def make_batch(config, batch: int, seed: int) -> dict[str, np.ndarray]:
  """Random inputs with every key of a training batch (pipeline.train_keys(config)).

  Even examples: a whole clip; odd ones: valid samples [L / 10, 0.6 L) (extra masking and
  padding). Example 0 has a negative piece spliced in at [0.3 L, 0.5 L) (pos_mask 0 there)
  and is a quad-mixup image whose true quarter is the top-left (image_mask)."""
  rng = np.random.default_rng(seed)
  s, length = config.input.image_size, config.input.audio_samples
  idx = np.arange(batch)
  audio_len = np.where(idx % 2 == 0, length, int(0.6 * length)).astype(np.int32)
  audio_start = np.where(idx % 2 == 0, 0, length // 10).astype(np.int32)
  t = np.arange(length)[None]
  valid = (t < audio_len[:, None]) & (t >= audio_start[:, None])
  audio = (0.1 * rng.standard_normal((batch, length))).astype(np.float32) * valid
  pos_mask = (t < audio_len[:, None]).astype(np.float32)
  pos_mask[0, int(0.3 * length):length // 2] = 0.0
  image_mask = np.ones((batch, s, s), np.uint8)
  image_mask[0] = 0
  image_mask[0, :s // 2, :s // 2] = 1
  out = dict(image=rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8), audio=audio,
             audio_len=audio_len, source=np.zeros(batch, np.int32), audio_start=audio_start,
             pos_mask=pos_mask, image_mask=image_mask)
  return {k: out[k] for k in pipeline.train_keys(config)}


def first_step_draws(config, batch, audio_steps: int, audio_shape, image_shape):
  """The random indices the JAX step draws at step 0 (trainer/step.py's key derivation):
  (nonneg_pressure's dict b, f, t, h, w; silence's (b, t) or empty when it is skipped)."""
  rng = jax.random.fold_in(jax.random.key(config.seed + 1), 0)
  _, mask_rng, loss_rng = jax.random.split(rng, 3)
  rng_silence, rng_nonneg = jax.random.split(loss_rng)
  n = int(config.loss.num_samples)
  nonneg = {k: np.asarray(v) for k, v in
            regularisers.sample_pairs(rng_nonneg, audio_shape, image_shape, n).items()}
  mask = preprocess.audio_mask(
      jnp.asarray(batch['audio']), jnp.asarray(batch['audio_len']), audio_steps, vad=False,
      rng=mask_rng, audio_start=(jnp.asarray(batch['audio_start'])
                                 if 'audio_start' in batch else None))
  b_idx, t_idx, present = regularisers.sample_silent_steps(mask, rng_silence, n)
  silence = ((np.asarray(b_idx), np.asarray(t_idx)) if bool(present)
             else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
  return nonneg, silence



def torch_model(config):
  """The TorchDenseAV of `config` (same shapes as build_model(config)), random weights."""
  from denseav_jax.testing import torch_denseav  # pylint: disable=g-import-not-at-top
  m, a, i = config.model, config.model.audio, config.model.image
  pos_grid = int(i.pos_grid) or config.input.image_size // i.patch_size
  audio = dict(num_layers=a.depth, eps=a.ln_eps, hidden_size=a.width,
               num_attention_heads=a.num_heads, intermediate_size=a.mlp_dim,
               conv_dim=(a.conv_channels,) * len(a.conv_kernels),
               conv_kernel=tuple(a.conv_kernels), conv_stride=tuple(a.conv_strides),
               num_conv_pos_embeddings=a.pos_conv_kernel,
               num_conv_pos_embedding_groups=a.pos_conv_groups, hidden_dropout=a.dropout,
               attention_dropout=a.attention_dropout, activation_dropout=a.activation_dropout,
               feat_proj_dropout=a.feat_proj_dropout, layerdrop=a.layerdrop,
               # masked_spec_embed exists (ours always has it); masking only if asked.
               mask_time_prob=max(a.mask_time_prob, 0.05),
               apply_spec_augment=a.mask_time_prob > 0, mask_time_length=a.mask_time_length,
               mask_time_min_masks=a.mask_time_min_masks)
  image = dict(patch_size=i.patch_size, width=i.width, depth=i.depth, num_heads=i.num_heads,
               img_size=pos_grid * i.patch_size)
  return torch_denseav.TorchDenseAV(
      code=m.code_dim, image=image, audio=audio, lora_rank=i.lora.rank,
      lora_alpha=i.lora.alpha, lora_dropout=i.lora.dropout, aligner_heads=m.aligner_heads,
      image_aligner=m.image_aligner, audio_aligner=m.audio_aligner,
      cal_init=config.sim.cal_init, seed=config.seed)
