"""The loss over the global batch and the jitted update step (docs/method.md#losses)."""

import jax
import jax.numpy as jnp
import optax

from denseav_jax.losses import objective
from denseav_jax.parallel import sharding
from denseav_jax.similarity import matrix
from denseav_jax.data import pipeline
from denseav_jax.parallel import microbatch
from denseav_jax.parallel import partitioning
from denseav_jax.models import preprocess
from denseav_jax.trainer import optim
from denseav_jax.trainer.state import TrainState

# Gradient-norm groups logged per step: each tower, and everything else (aligners,
# calibrator, audio CLS, SimPool).
GRAD_GROUPS = {'image_model': 'image_tower', 'audio_model': 'audio_tower'}


def pool_image(feats: jax.Array, k: int) -> jax.Array:
  """k x k average pooling of [B, H, W, C] (training only, docs/method.md#train-time-pooling)."""
  if k <= 1:
    return feats
  b, h, w, c = feats.shape
  return feats[:, :h - h % k, :w - w % k].reshape(b, h // k, k, w // k, k, c).mean((2, 4))


def mask_to_grid(mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Pixel mask [B, S, S] (1 on the true image, quad mixup) average-pooled to [B, h, w]."""
  b, s_h, s_w = mask.shape
  h, w = grid
  if s_h % h or s_w % w:
    raise ValueError(f'image_mask of {s_h}x{s_w} pixels does not pool onto the {h}x{w} '
                     'feature grid')
  return mask.astype(jnp.float32).reshape(b, h, s_h // h, w, s_w // w).mean((2, 4))


def apply_model(variables, batch, model, config, mesh, dropout_rng, mask_rng):
  """The model's outputs for the batch: one call, or with config.model.tower_microbatches
  = n > 1 each tower (with its aligner) over n sequential chunks of the per-device batch,
  rematerialised chunk by chunk in the backward pass (parallel/microbatch.py): the same
  values and gradients with a tower's activations held for 1/n of the batch. Dropout
  and the audio mask's random step are then drawn per chunk."""
  n = int(config.model.tower_microbatches)
  if n <= 1:
    return model.apply(variables, batch['image'], batch['audio'], batch['audio_len'],
                       train=True, mask_rng=mask_rng, audio_start=batch.get('audio_start'),
                       rngs={'dropout': dropout_rng})

  def image(i, images):
    return model.apply(variables, images, train=True, method=model.embed_image,
                       rngs={'dropout': jax.random.fold_in(dropout_rng, 2 * i)})

  def audio(i, wave, audio_len, audio_start):
    return model.apply(variables, wave, audio_len, train=True,
                       mask_rng=jax.random.fold_in(mask_rng, i), audio_start=audio_start,
                       method=model.embed_audio,
                       rngs={'dropout': jax.random.fold_in(dropout_rng, 2 * i + 1)})

  image_feats, image_cls = microbatch.map_chunks(image, n, mesh, (batch['image'],))
  start = batch.get('audio_start')
  if start is None:
    start = jnp.zeros_like(batch['audio_len'])
  audio_feats, audio_cls, audio_mask = microbatch.map_chunks(
      audio, n, mesh, (batch['audio'], batch['audio_len'], start))
  out = dict(image_feats=image_feats, image_cls=image_cls, audio_feats=audio_feats,
             audio_cls=audio_cls, audio_mask=audio_mask,
             cal=model.apply(variables, method=model.calibration))
  if 'sim_cal_b' in variables['params']:
    out['cal_bias'] = variables['params']['sim_cal_b']
  return out


def loss_fn(params, batch, rng, model, config, mesh, phase: int = 2):
  """Total loss over the global batch and every logged term (docs/method.md#losses)."""
  dropout_rng, mask_rng, loss_rng = jax.random.split(rng, 3)
  variables = {'params': optim.freeze(params, optim.trainable_mask(params, config, phase))}
  out = apply_model(variables, batch, model, config, mesh, dropout_rng, mask_rng)
  out = dict(out, image_feats=pool_image(out['image_feats'], config.model.train_image_pool))
  # The [B, B] matrix over the global batch: the scalable operator keeps each device's
  # audio rows and circulates the images round the mesh (similarity/scalable.py); the loss's row and
  # column reductions over the row-sharded matrix become collectives under jit.
  a_vec, i_vec = out['audio_cls'], out['image_cls']
  if config.sim.agg == 'simpool':  # Pooling with parameters, on the (pooled) train maps.
    a_vec = model.apply(variables, out['audio_feats'], method=model.pool)
    i_vec = model.apply(variables, out['image_feats'], method=model.pool)
  s = matrix.score_matrix(config, mesh, out['audio_feats'], out['audio_mask'],
                              out['image_feats'], a_vec, i_vec)
  loss, terms = objective.loss_terms(
      s, out, config.loss, num_heads=config.model.num_heads, nonneg=config.sim.nonneg,
      use_cls=config.sim.use_cls, cal_init=config.sim.cal_init, rng=loss_rng,
      pos_mask=(preprocess.resize_linear(batch['pos_mask'], out['audio_mask'].shape[1])
                if 'pos_mask' in batch else None),
      image_mask=(mask_to_grid(batch['image_mask'], out['image_feats'].shape[1:3])
                  if 'image_mask' in batch else None),
      source=batch.get('source'), bias=out.get('cal_bias'))
  labels = jnp.arange(s.shape[0])
  metrics = dict(loss=loss, cal=out['cal'],
                 batch_a2i_acc=jnp.mean(jnp.argmax(s, axis=1) == labels),
                 batch_i2a_acc=jnp.mean(jnp.argmax(s, axis=0) == labels),
                 audio_mask_frac=out['audio_mask'].mean(),
                 sim_pos=jnp.mean(jnp.diagonal(s)),
                 sim_neg=(s.sum() - jnp.trace(s)) / float(max(s.shape[0] * (s.shape[0] - 1), 1)))
  metrics |= {f'loss_{k}': v for k, v in terms.items()}
  return loss, metrics


def grad_norms(grads) -> dict[str, jax.Array]:
  """Global gradient norm and one per group (GRAD_GROUPS, 'heads' for the rest)."""
  sq = {name: jnp.zeros((), jnp.float32) for name in (*GRAD_GROUPS.values(), 'heads')}
  for key, sub in grads.items():
    group = GRAD_GROUPS.get(key, 'heads')
    sq[group] = sq[group] + sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                for g in jax.tree.leaves(sub))
  out = {f'grad_norm/{k}': jnp.sqrt(v) for k, v in sq.items()}
  out['grad_norm'] = jnp.sqrt(sum(sq.values()))
  return out


def make_train_step(config, model, tx, mesh, state_shardings, phase: int = 2):
  """jit(state, batch) -> (state, metrics): one update of `phase`'s parameters with `tx`.

  The state is donated; metrics are replicated scalars. The step's randomness is the
  config's seed folded with the global step, so a resumed run draws the same numbers.
  """
  base_key = jax.random.key(config.seed + 1)
  rules = partitioning.rules_from_config(config.partitioning)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    with partitioning.activation_sharding(mesh, rules):
      (_, metrics), grads = grad_fn(state.params, batch, rng, model, config, mesh, phase)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics |= grad_norms(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_shardings = {k: sharding.batch_sharding(mesh) for k in pipeline.train_keys(config)}
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,))
