"""The model's parameters without an optimizer: initialisation, shapes and shardings.

Training (denseav_jax.trainer), evaluation, predict and convert all build parameter trees
here, so loading a model never needs an optimizer.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from denseav_jax.parallel import partitioning
from denseav_jax.models import denseav


def dummy_batch(config: ml_collections.ConfigDict, batch: int) -> dict[str, jax.Array]:
  """Zeros shaped like a training batch of `batch` examples (for init and shapes)."""
  s, length = config.input.image_size, config.input.audio_samples
  return dict(image=jnp.zeros((batch, s, s, 3), jnp.uint8),
              audio=jnp.zeros((batch, length), jnp.float32),
              audio_len=jnp.full((batch,), length, jnp.int32),
              source=jnp.zeros((batch,), jnp.int32))


def init_params(config, model, key, boxed: bool = False):
  """Freshly initialised parameters (with their logical-axis boxes if `boxed`).

  Jitted, and the jitted init is kept per model (its repr names every field) and input
  shape: op-by-op init compiles every small op on its own (27.5 s for the tiny bf16 model on
  CPU, against 10 s jitted, measured with another job running; 0 s when cached).
  """
  params = _jitted_init(denseav.Arch(model), int(config.input.image_size),
                        int(config.input.audio_samples))(key)
  return params if boxed else nn.meta.unbox(params)


@functools.lru_cache(maxsize=16)
def _jitted_init(arch: denseav.Arch, image_size: int, audio_samples: int):
  model = arch.model

  def init(k):  # Builds its inputs inside: a cached closure must not hold tracers.
    image = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)
    audio = jnp.zeros((2, audio_samples), jnp.float32)
    audio_len = jnp.full((2,), audio_samples, jnp.int32)
    return model.init({'params': k, 'dropout': k}, image, audio, audio_len)['params']
  return jax.jit(init)


def param_shapes(config, model):
  """The parameters' ShapeDtypeStructs (no compute, no devices)."""
  return jax.eval_shape(lambda k: init_params(config, model, k), jax.random.key(0))


def param_shardings(config, model, mesh):
  """NamedShardings of the parameters from their logical axes and config.partitioning."""
  boxed = jax.eval_shape(lambda k: init_params(config, model, k, boxed=True),
                         jax.random.key(0))
  shapes, logical = partitioning.split_boxed(boxed)
  rules = partitioning.rules_from_config(config.partitioning)
  return partitioning.shardings_for(shapes, logical, mesh, rules)


def abstract_params(config, model, mesh=None):
  """ShapeDtypeStructs carrying the parameters' shardings on `mesh` (default: one local
  device), to restore a checkpoint straight onto its devices."""
  shapes = param_shapes(config, model)
  if mesh is None:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: dev, shapes)
  else:
    shardings = param_shardings(config, model, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def count_params(params) -> dict[str, int]:
  """Parameter count per top-level module."""
  return {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in params.items()}
