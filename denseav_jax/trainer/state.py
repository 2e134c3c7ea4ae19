"""The train state: created straight into its shardings, or described abstractly (shapes
and shardings, no compute) so a checkpoint restores directly onto the mesh."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from denseav_jax.checkpoint import model_io
from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax.models import params as params_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Global step (counts both phases).
  params: Any
  opt_state: Any  # The optimizer of the current phase (trainer.optim.make_optimizer).


def _init_fn(config, model, tx):
  def init(key):
    params = params_lib.init_params(config, model, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


OPT_STATE_SHARDINGS = ('params', 'batch')


def opt_shardings(tx, opt_shapes, param_shardings, mesh, how: str = 'params'):
  """Adam moments follow their parameters' shardings ('params'), or are split further over
  the mesh's batch axes ('batch': config.opt_state_sharding, ZeRO stage 1: each of the N
  data-parallel devices holds 1/N of them and the update all-gathers); counts are
  replicated."""
  repl = sharding.replicated(mesh)
  masked = lambda x: isinstance(x, optax.MaskedNode)  # Frozen params: no moments.

  def moment(x, s):
    if masked(x):
      return x
    return sharding.over_batch_axes(s, x.shape) if how == 'batch' else s

  return optax.tree_map_params(tx, moment, opt_shapes, param_shardings,
                               transform_non_params=lambda _: repl, is_leaf=masked)


def abstract_state(config, model, tx, mesh) -> tuple[Any, Any]:
  """The state's ShapeDtypeStructs (carrying shardings) and its shardings; no compute.

  Parameters follow config.partitioning; the optimizer state follows its parameters, or
  with config.opt_state_sharding='batch' is split over the batch axes as well.
  """
  shapes = jax.eval_shape(_init_fn(config, model, tx), jax.random.key(config.seed))
  p_shard = params_lib.param_shardings(config, model, mesh)
  shardings = TrainState(step=sharding.replicated(mesh), params=p_shard,
                         opt_state=opt_shardings(tx, shapes.opt_state, p_shard, mesh,
                                                   config.opt_state_sharding))
  return model_io.abstract_like(shapes, shardings), shardings


def load_init_params(config, abstract_params, shardings):
  """config.init_from's converted parameters, placed with `shardings`; a model that does
  not fit the config is a CheckpointError listing the keys."""
  try:
    return model_io.load_params(config.init_from, abstract_params, shardings)
  except (ValueError, FileNotFoundError) as e:
    raise errors.CheckpointError(f'config.init_from: {e}') from e


def create_state(config, model, tx, mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (a jitted init, no host copy).

  With config.init_from, the parameters then come from that converted checkpoint."""
  abstract, shardings = abstract_state(config, model, tx, mesh)
  if not config.init_from:
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


def with_optimizer(state: TrainState, config, model, tx, mesh) -> tuple[TrainState, Any]:
  """`state` with a fresh optimizer `tx` (the phase switch): same step and parameters,
  new Adam moments and schedule count, placed in their shardings."""
  _, shardings = abstract_state(config, model, tx, mesh)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(state.params)
  return state.replace(opt_state=opt_state), shardings
