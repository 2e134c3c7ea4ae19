"""Running a function over the local batch in sequential chunks (config.model.tower_microbatches).

`map_chunks(fn, n, mesh, args)` splits every [B, ...] array of `args` into n chunks such
that each chunk keeps the batch's sharding (device d's chunk i is its own rows i*m..(i+1)*m:
no communication), runs `fn` on one chunk after the other under `jax.lax.map`, with
`jax.checkpoint` around it, and puts the outputs back in batch order. Under `jax.grad` the
backward pass recomputes one chunk at a time, so a tower's activations are held for B / n
examples per device instead of B (docs/pods.md#memory-levers); the values and gradients
are those of one call on the whole batch (the tests: tests/parallel/test_microbatch.py),
only randomness drawn per chunk (dropout) differs.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from denseav_jax import errors
from denseav_jax.parallel import sharding


def _split(x: jax.Array, n: int, dp: int, spec) -> jax.Array:
  m = x.shape[0] // (dp * n)
  y = x.reshape(dp, n, m, *x.shape[1:]).swapaxes(0, 1).reshape(n, dp * m, *x.shape[1:])
  return jax.lax.with_sharding_constraint(y, spec) if spec is not None else y


def _merge(y: jax.Array, n: int, dp: int, spec) -> jax.Array:
  m = y.shape[1] // dp
  x = y.reshape(n, dp, m, *y.shape[2:]).swapaxes(0, 1).reshape(n * dp * m, *y.shape[2:])
  return jax.lax.with_sharding_constraint(x, spec) if spec is not None else x


def check(batch_size: int, n: int, mesh) -> None:
  dp = sharding.data_parallel_size(mesh) if mesh is not None else 1
  if n < 1 or batch_size % (dp * n):
    raise errors.ConfigError(
        f'config.model.tower_microbatches={n}: the {batch_size // max(dp, 1)} examples per '
        f'device (batch {batch_size} over {dp} data-parallel devices) do not split into {n} '
        'equal chunks; use a divisor of the per-device batch (1 = off)')


def map_chunks(fn: Callable[..., Any], n: int, mesh, args: tuple, policy=None) -> Any:
  """fn(i, *chunk_args) over n chunks of the leading (batch) axis of every array in `args`
  (i: the chunk's index, to fold into random keys); returns fn's outputs (a pytree of
  [B, ...] arrays) for the whole batch. n = 1 calls fn(0, *args)."""
  if n == 1:
    return fn(jnp.int32(0), *args)
  b = jax.tree.leaves(args)[0].shape[0]
  check(b, n, mesh)
  dp = sharding.data_parallel_size(mesh) if mesh is not None else 1
  axes = sharding.batch_axes(mesh) if mesh is not None else ()
  split_spec = NamedSharding(mesh, P(None, axes)) if mesh is not None else None
  merge_spec = NamedSharding(mesh, P(axes)) if mesh is not None else None
  chunks = jax.tree.map(lambda x: _split(x, n, dp, split_spec), args)
  body = jax.checkpoint(lambda i, a: fn(i, *a), policy=policy)
  out = jax.lax.map(lambda ia: body(*ia), (jnp.arange(n, dtype=jnp.int32), chunks))
  return jax.tree.map(lambda y: _merge(y, n, dp, merge_spec), out)
