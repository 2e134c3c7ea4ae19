"""Device mesh from the config, and placing host batches onto it.

`config.mesh` lists (axis name, size) pairs; one size may be -1 (all remaining
devices). The batch is split over the `data` axis; parameters are replicated (FSDP and
tensor-parallel rules arrive with the full-size towers).
"""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data',)


def make_mesh(mesh_spec: Sequence[tuple[str, int]], devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  names = [str(n) for n, _ in mesh_spec]
  sizes = [int(s) for _, s in mesh_spec]
  if 'data' not in names:
    raise ValueError(f"config.mesh={list(mesh_spec)} needs a 'data' axis")
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh={list(mesh_spec)} has more than one -1 size')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh={list(mesh_spec)}: {len(devices)} devices are not '
                       f'divisible by {known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'config.mesh={list(mesh_spec)} needs {int(np.prod(sizes))} devices, '
                     f'found {len(devices)}')
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's batch axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def put_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
  """Host-local batch (this process's slice) -> global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
