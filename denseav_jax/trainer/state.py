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
from denseav_jax.trainer import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Global step (counts both phases).
  params: Any
  opt_state: Any  # The optimizer of the current phase (trainer.optim.make_optimizer).


FROZEN_DTYPES = ('float32', 'bfloat16')


def hold(params, config, phase: int):
  """`params` as the state holds them in `phase`: with config.frozen_dtype='bfloat16',
  the weight matrices and kernels the phase freezes (optim.trainable_mask) in bfloat16
  (half their memory; the layers read them in the compute dtype, bfloat16), the others as
  they are. Works on arrays and on ShapeDtypeStructs."""
  if config.frozen_dtype == 'float32':
    return params
  mask = optim.trainable_mask(params, config, phase)

  def cast(x, trainable):
    # Matrices and conv kernels only: the layers cast those to the compute dtype before
    # using them; vectors (biases, norm scales) may enter float32 arithmetic.
    if trainable or x.dtype == jnp.bfloat16 or len(x.shape) < 2:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=x.sharding)
    return x.astype(jnp.bfloat16)
  return jax.tree.map(cast, params, mask)


def _init_fn(config, model, tx, phase: int = 2):
  def init(key):
    params = hold(params_lib.init_params(config, model, key), config, phase)
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


def abstract_state(config, model, tx, mesh, phase: int = 2) -> tuple[Any, Any]:
  """The state's ShapeDtypeStructs (carrying shardings) and its shardings in `phase`; no
  compute.

  Parameters follow config.partitioning (and are held in bfloat16 where the phase freezes
  them with config.frozen_dtype='bfloat16'); the optimizer state follows its parameters,
  or with config.opt_state_sharding='batch' is split over the batch axes as well.
  """
  shapes = jax.eval_shape(_init_fn(config, model, tx, phase), jax.random.key(config.seed))
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


def source_params(config, model, mesh, shardings):
  """The initial parameters in float32, placed with `shardings`: config.init_from's
  converted checkpoint, or the seed's initialisation (the same values every time)."""
  if config.init_from:
    abstract = params_lib.abstract_params(config, model, mesh)
    return load_init_params(config, abstract, shardings)
  return jax.jit(lambda k: params_lib.init_params(config, model, k),
                 out_shardings=shardings)(jax.random.key(config.seed))


def create_state(config, model, tx, mesh, phase: int = 2) -> tuple[TrainState, Any]:
  """Initialises the state of `phase` directly into its shardings (a jitted init, no host
  copy).

  With config.init_from, the parameters then come from that converted checkpoint."""
  abstract, shardings = abstract_state(config, model, tx, mesh, phase)
  if not config.init_from:
    state = jax.jit(_init_fn(config, model, tx, phase), out_shardings=shardings)(
        jax.random.key(config.seed))
    return state, shardings
  # Parameters straight from the converted checkpoint into their shardings (no random init
  # to throw away); only the optimizer state is initialised.
  params = load_init_params(config, abstract.params, shardings.params)
  params = jax.jit(lambda p: hold(p, config, phase), out_shardings=shardings.params)(params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  print(f'Initial weights from {config.init_from}', flush=True)
  return TrainState(step=step, params=params, opt_state=opt_state), shardings


def with_optimizer(state: TrainState, config, model, tx, mesh, phase: int = 2
                   ) -> tuple[TrainState, Any]:
  """`state` with a fresh optimizer `tx` of `phase` (the phase switch): same step and
  parameters, new Adam moments and schedule count, placed in their shardings. Parameters
  held in bfloat16 while frozen (config.frozen_dtype) that `phase` trains come back in
  float32 from their source (source_params): frozen, they never changed."""
  abstract, shardings = abstract_state(config, model, tx, mesh, phase)
  params = state.params
  thawed = jax.tree.map(lambda x, a: x.dtype == jnp.bfloat16 and a.dtype != jnp.bfloat16,
                        params, abstract.params)
  if any(jax.tree.leaves(thawed)):
    source = source_params(config, model, mesh, shardings.params)
    params = jax.tree.map(lambda x, src, t: src if t else x, params, source, thawed)
  params = hold(params, config, phase)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state), shardings
