"""Trains DenseAV on a device mesh; resumes from WORKDIR's latest checkpoint.

  python -m denseav_jax.train --config configs/synthetic.py --workdir runs/synth \
      [--config.batch_size=64 ...]

Sections: state and optimizer | loss | update step | loop (input, checkpoints, logging,
periodic evaluation).
"""

import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from denseav_jax import checkpoint
from denseav_jax import cli
from denseav_jax import losses
from denseav_jax import sharding
from denseav_jax import sim_sharded
from denseav_jax.data import pipeline
from denseav_jax.evals import evaluator as evaluator_lib
from denseav_jax.models import denseav
from denseav_jax.models import partitioning
from denseav_jax.models import preprocess
from denseav_jax import tb


# ----------------------------------------------------------- state and optimizer

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
  """Clips each parameter tensor's gradient to norm `max_norm` separately (release)."""
  def update(updates, state, params=None):
    del params
    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)).astype(g.dtype)
    return jax.tree.map(clip, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def trainable_mask(params, config: ml_collections.ConfigDict):
  """True on parameters the optimizer updates. A tower with `finetune=False` is frozen
  except for its LoRA adapters (`lora_a`, `lora_b`); everything else always trains."""
  frozen_towers = {name for name, key in (('image_model', 'image'), ('audio_model', 'audio'))
                   if not config.model[key].get('finetune', True)}

  def label(path, _):
    keys = [getattr(k, 'key', None) for k in path]
    if keys and keys[0] in frozen_towers:
      return keys[-1] in ('lora_a', 'lora_b')
    return True
  return jax.tree_util.tree_map_with_path(label, params)


def freeze(params, mask):
  """stop_gradient on frozen parameters (XLA then skips their weight gradients)."""
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, mask)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  warmup = max(config.warmup_steps, 1)
  if config.lr_schedule == 'constant':
    schedule = optax.warmup_constant_schedule(0.0, config.lr, warmup)
  elif config.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, warmup, max(config.num_train_steps, warmup + 1))
  else:
    raise cli.UserError(f"config.lr_schedule={config.lr_schedule!r}: use 'constant' or 'cosine'")
  adam = optax.chain(clip_by_tensor_norm(config.grad_clip_per_tensor),
                     optax.adam(schedule, eps=config.adam_eps))
  # Frozen parameters get no update and no Adam moments (no optimizer memory).
  labels = lambda params: jax.tree.map(lambda t: 'train' if t else 'frozen',
                                       trainable_mask(params, config))
  return optax.multi_transform({'train': adam, 'frozen': optax.set_to_zero()}, labels)


def dummy_batch(config: ml_collections.ConfigDict, batch: int) -> dict[str, jax.Array]:
  s, length = config.input.image_size, config.input.audio_samples
  return dict(image=jnp.zeros((batch, s, s, 3), jnp.uint8),
              audio=jnp.zeros((batch, length), jnp.float32),
              audio_len=jnp.full((batch,), length, jnp.int32),
              source=jnp.zeros((batch,), jnp.int32))


_JITTED_INITS: dict[tuple[str, tuple[int, ...], tuple[int, ...]], Any] = {}


def init_params(config, model, key, boxed: bool = False):
  """Freshly initialised parameters (with their logical-axis boxes if `boxed`).

  Jitted, and the jitted init is kept per model (its repr names every field) and input
  shape: op-by-op init compiles every small op on its own (27.5 s for the tiny bf16 model on
  CPU, against 10 s jitted, measured with another job running; 0 s when cached).
  """
  shapes = jax.eval_shape(lambda: dummy_batch(config, 2))
  cache_key = (repr(model), shapes['image'].shape, shapes['audio'].shape)
  init = _JITTED_INITS.get(cache_key)
  if init is None:
    def init(k):  # Builds its inputs inside: a cached closure must not hold tracers.
      b = dummy_batch(config, 2)
      return model.init({'params': k, 'dropout': k}, b['image'], b['audio'],
                        b['audio_len'])['params']
    init = jax.jit(init)
    if len(_JITTED_INITS) >= 16:
      _JITTED_INITS.pop(next(iter(_JITTED_INITS)))
    _JITTED_INITS[cache_key] = init
  params = init(key)
  return params if boxed else nn.meta.unbox(params)


def _init_fn(config, model, tx):
  def init(key):
    params = init_params(config, model, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def param_shardings(config, model, mesh):
  """NamedShardings of the parameters from their logical axes and config.partitioning."""
  boxed = jax.eval_shape(lambda k: init_params(config, model, k, boxed=True),
                         jax.random.key(0))
  shapes, logical = partitioning.split_boxed(boxed)
  rules = partitioning.rules_from_config(config.get('partitioning', 'dp'))
  return partitioning.shardings_for(shapes, logical, mesh, rules)


def abstract_state(config, model, tx, mesh) -> tuple[Any, Any]:
  """The state's ShapeDtypeStructs (carrying shardings) and its shardings; no compute.

  Parameters follow config.partitioning; the Adam moments follow their parameters.
  """
  shapes = jax.eval_shape(_init_fn(config, model, tx), jax.random.key(config.seed))
  p_shard = param_shardings(config, model, mesh)
  repl = sharding.replicated(mesh)
  masked = lambda x: isinstance(x, optax.MaskedNode)  # Frozen params: no moments.
  opt_shard = optax.tree_map_params(tx, lambda x, s: x if masked(x) else s, shapes.opt_state,
                                    p_shard, transform_non_params=lambda _: repl,
                                    is_leaf=masked)
  shardings = TrainState(step=repl, params=p_shard, opt_state=opt_shard)
  return checkpoint.abstract_like(shapes, shardings), shardings


def load_init_params(config, abstract_params, shardings):
  """config.init_from's converted parameters, placed with `shardings`; a model that does
  not fit the config is a cli.UserError listing the keys."""
  try:
    return checkpoint.load_params(config.init_from, abstract_params, shardings)
  except (ValueError, FileNotFoundError) as e:
    raise cli.UserError(f'config.init_from: {e}') from e


def create_state(config, model, tx, mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (a jitted init, no host copy).

  With config.init_from, the parameters then come from that converted checkpoint."""
  abstract, shardings = abstract_state(config, model, tx, mesh)
  if not config.get('init_from'):
    state = jax.jit(_init_fn(config, model, tx), out_shardings=shardings)(
        jax.random.key(config.seed))
    return state, shardings
  # Parameters straight from the converted checkpoint into their shardings (no random init
  # to throw away); only the optimizer state is initialised.
  params = load_init_params(config, abstract.params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  print(f'Initial weights from {config.init_from}', flush=True)
  return TrainState(step=step, params=params, opt_state=opt_state), shardings


def count_params(params) -> dict[str, int]:
  return {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in params.items()}


# --------------------------------------------------------------------------- loss

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


def loss_fn(params, batch, rng, model, config, mesh):
  """Total loss over the global batch and every logged term (docs/method.md#losses)."""
  dropout_rng, mask_rng, loss_rng = jax.random.split(rng, 3)
  variables = {'params': freeze(params, trainable_mask(params, config))}
  out = model.apply(variables, batch['image'], batch['audio'], batch['audio_len'],
                    train=True, mask_rng=mask_rng, audio_start=batch.get('audio_start'),
                    rngs={'dropout': dropout_rng})
  out = dict(out, image_feats=pool_image(out['image_feats'], config.model.train_image_pool))
  # The [B, B] matrix over the global batch: the scalable operator keeps each device's
  # audio rows and circulates the images round the mesh (sim_sharded); the loss's row and
  # column reductions over the row-sharded matrix become collectives under jit.
  a_vec, i_vec = out['audio_cls'], out['image_cls']
  if config.sim.agg == 'simpool':  # Pooling with parameters, on the (pooled) train maps.
    a_vec = model.apply(variables, out['audio_feats'], method=model.pool)
    i_vec = model.apply(variables, out['image_feats'], method=model.pool)
  s = sim_sharded.from_config(config, mesh, out['audio_feats'], out['audio_mask'],
                              out['image_feats'], a_vec, i_vec)
  loss, terms = losses.loss_terms(
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
                 sim_neg=(s.sum() - jnp.trace(s)) / max(s.shape[0] * (s.shape[0] - 1), 1))
  metrics |= {f'loss_{k}': v for k, v in terms.items()}
  return loss, metrics


# ------------------------------------------------------------------ update step

def make_train_step(config, model, tx, mesh, state_shardings):
  base_key = jax.random.key(config.seed + 1)
  rules = partitioning.rules_from_config(config.get('partitioning', 'dp'))

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    with partitioning.activation_sharding(mesh, rules):
      (_, metrics), grads = grad_fn(state.params, batch, rng, model, config, mesh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_shardings = {k: sharding.batch_sharding(mesh) for k in pipeline.train_keys(config)}
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,))


# --------------------------------------------------------------------------- loop

def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last evaluation's metrics."""
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise cli.UserError(f'config.batch_size={config.batch_size} is not divisible by the '
                        f'{dp} devices of the data axis')
  model = denseav.build_model(config)
  tx = make_optimizer(config)
  if jax.process_index() == 0:  # Lets predict / evaluate rebuild the model from the workdir.
    checkpoint.save_config(workdir, config)
  train_iter = pipeline.train_iterator(config)
  mgr = checkpoint.manager(workdir, keep=config.keep_checkpoints,
                           save_every=config.checkpoint_every_steps)
  if mgr.latest_step() is not None:  # Restore straight into the shardings; no init.
    abstract, state_shardings = abstract_state(config, model, tx, mesh)
    state = checkpoint.restore(mgr, abstract, train_iter)
    print(f'Resumed from {mgr.directory}/{mgr.latest_step()}', flush=True)
  else:
    state, state_shardings = create_state(config, model, tx, mesh)
    print('Parameters: ' + ', '.join(f'{k} {v:,}' for k, v in count_params(state.params).items()
                                     if v > 1), flush=True)
  train_step = make_train_step(config, model, tx, mesh, state_shardings)
  writer = tb.Writer(workdir) if jax.process_index() == 0 else tb.NullWriter()
  evaluator = evaluator_lib.Evaluator(config, model, mesh, state_shardings.params)

  step = int(state.step)
  first_step = step
  last_metrics: dict[str, float] = {}
  t_start = t_log = time.time()
  step_log = step
  while step < config.num_train_steps:
    batch = sharding.put_batch(next(train_iter), mesh)
    state, metrics = train_step(state, batch)
    step += 1
    out_of_time = config.max_seconds and time.time() - t_start > config.max_seconds
    done = step >= config.num_train_steps or out_of_time
    if step % config.log_every_steps == 0 or done:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(metrics['loss']):
        raise FloatingPointError(f'loss became {metrics["loss"]} at step {step}; '
                                 'try a lower config.lr')
      now = time.time()
      ex_s = (step - step_log) * config.batch_size / max(now - t_log, 1e-9)
      sec_per_step = (now - t_start) / max(step - first_step, 1)
      eta = sec_per_step * (config.num_train_steps - step)
      print(f'step {step}/{config.num_train_steps} loss {metrics["loss"]:.4f} '
            f'{ex_s:.1f} ex/s ETA {_fmt_time(eta)}', flush=True)
      writer.scalars(step, {f'train/{k}': v for k, v in metrics.items()} |
                     {'train/examples_per_s': ex_s} | train_iter.stats())
      t_log, step_log = now, step
    if step % config.checkpoint_every_steps == 0 or done:
      checkpoint.save(mgr, step, state, train_iter, force=done)
    if ((done and config.eval_at_end) or
        (config.eval_every_steps and step % config.eval_every_steps == 0)):
      last_metrics = evaluator.evaluate(state.params, step, workdir, writer)
      print(f'eval step {step}: ' + ' '.join(
          f'{k}={v:.3f}' for k, v in last_metrics.items() if 'chance' not in k), flush=True)
    if out_of_time:
      print(f'Stopping after config.max_seconds={config.max_seconds}', flush=True)
      break
  print(train_iter.summary(), flush=True)
  writer.close()
  mgr.close()
  return last_metrics


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  config, workdir = cli.config_and_workdir(create_workdir=True)
  train_and_evaluate(config, workdir)


if __name__ == '__main__':
  cli.run_main(main)
