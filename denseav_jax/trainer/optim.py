"""The optimizer of each training phase: schedules, per-tensor clipping, trainable masks.

The recipe (docs/training.md#recipe) trains in two phases:

  phase 1  the first `config.pretrain_steps` steps: both backbones frozen; the aligners,
           the calibrator, the audio CLS token (and SimPool) train at `config.pretrain_lr`;
  phase 2  the rest: additionally every tower with `finetune=True` (HuBERT) and the LoRA
           adapters of every tower (the image LoRA) train, at `config.lr`.

As in the release, each phase starts a fresh Adam (eps `config.adam_eps`) whose schedule
begins again: a linear warm-up from 0 over `config.warmup_steps`, then 'constant', 'cosine'
(to 0 at the end of the phase) or 'sgdr' (cosine restarts: cycles of
`config.lr_cycle_length` steps, each twice as long as the one before, down to 2 % of the
rate). Before Adam, each parameter tensor's gradient is clipped to norm
`config.grad_clip_per_tensor` on its own. Frozen parameters get no update and no Adam
moments, so phase 1 keeps no optimizer memory for the backbones.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from denseav_jax import errors

TOWERS = ('image_model', 'audio_model')
SCHEDULES = ('constant', 'cosine', 'sgdr')
SGDR_FLOOR = 0.02  # Fraction of the rate at the bottom of each cosine cycle.


def num_phases(config) -> int:
  return 2 if config.pretrain_steps > 0 else 1


def phase_at(config, step: int) -> int:
  """The phase step `step` trains in: 1 before config.pretrain_steps, then 2."""
  return 1 if step < config.pretrain_steps else 2


def phase_start(config, phase: int) -> int:
  return 0 if phase == 1 else max(config.pretrain_steps, 0)


def phase_length(config, phase: int) -> int:
  if phase == 1:
    return config.pretrain_steps
  return max(config.num_train_steps - phase_start(config, 2), 1)


def schedule(config: ml_collections.ConfigDict, phase: int) -> optax.Schedule:
  """The learning rate as a function of the step within `phase`."""
  lr = config.lr
  if phase == 1 and config.pretrain_lr > 0:
    lr = config.pretrain_lr
  warmup = max(config.warmup_steps, 1)
  kind = config.lr_schedule
  if kind == 'constant':
    return optax.warmup_constant_schedule(0.0, lr, warmup)
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(phase_length(config, phase), warmup + 1))
  if kind == 'sgdr':
    cycle = float(config.lr_cycle_length)
    if cycle <= 0:
      raise errors.ConfigError(f'config.lr_cycle_length={cycle}: must be > 0')
    floor = SGDR_FLOOR * lr

    def sgdr(count):
      t = jnp.asarray(count, jnp.float32)
      after = jnp.maximum(t - warmup, 0.0)
      k = jnp.floor(jnp.log2(after / cycle + 1.0))  # The cycle `after` falls in.
      start, length = cycle * (2.0 ** k - 1.0), cycle * 2.0 ** k
      cos = floor + (lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * (after - start) / length))
      return jnp.where(t < warmup, lr * t / warmup, cos)
    return sgdr
  raise errors.ConfigError(f'config.lr_schedule={kind!r}: use one of {SCHEDULES}')


def learning_rate(config, step: int) -> float:
  """The rate used by global step `step` (for logs)."""
  phase = phase_at(config, step)
  return float(schedule(config, phase)(step - phase_start(config, phase)))


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
  """Clips each parameter tensor's gradient to norm `max_norm` separately (release)."""
  def update(updates, state, params=None):
    del params
    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)).astype(g.dtype)
    return jax.tree.map(clip, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def trainable_mask(params, config: ml_collections.ConfigDict, phase: int = 2):
  """True on the parameters the optimizer updates in `phase` (see the module doc).

  Phase 2: a tower with `finetune=False` is frozen except for its LoRA adapters
  (`lora_a`, `lora_b`); everything else trains. Phase 1: nothing inside either tower.
  """
  frozen_towers = {name for name, key in zip(TOWERS, ('image', 'audio'))
                   if not config.model[key].finetune}

  def label(path, _):
    keys = [getattr(k, 'key', None) for k in path]
    if keys and keys[0] in TOWERS:
      if phase == 1:
        return False
      if keys[0] in frozen_towers:
        return keys[-1] in ('lora_a', 'lora_b')
    return True
  return jax.tree_util.tree_map_with_path(label, params)


def freeze(params, mask):
  """stop_gradient on frozen parameters (XLA then skips their weight gradients)."""
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, mask)


def make_optimizer(config: ml_collections.ConfigDict, phase: int = 2
                   ) -> optax.GradientTransformation:
  """Adam for `phase` (its schedule counts the phase's own steps; see the module doc)."""
  adam = optax.chain(clip_by_tensor_norm(config.grad_clip_per_tensor),
                     optax.adam(schedule(config, phase), eps=config.adam_eps))
  labels = lambda params: jax.tree.map(lambda t: 'train' if t else 'frozen',
                                       trainable_mask(params, config, phase))
  return optax.multi_transform({'train': adam, 'frozen': optax.set_to_zero()}, labels)
