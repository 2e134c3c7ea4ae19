"""The device mesh from the config, and placing host batches onto it (docs/training.md#sharding).

`config.mesh` lists (axis name, size) pairs over the axes

  data    pure data parallelism (parameters replicated along it);
  fsdp    data parallelism with parameters and optimizer state sharded along it (ZeRO-3);
  tensor  tensor parallelism (FFN hidden and attention projections split along it).

One size may be -1 (all remaining devices). The batch is split over `data` x `fsdp`, so the
global contrastive batch spans every device of every host. `config.mesh_dcn` gives the part
of each axis that runs across slices (multi-slice TPU) or nodes (multi-node GPU): the mesh is
then built with `mesh_utils.create_hybrid_device_mesh`, so that only those axes' collectives
cross the slow network.
"""

from typing import Any, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from denseav_jax import errors

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # The batch (and the contrastive matrix's rows) split over these.


_EXAMPLE = "e.g. --config.mesh=\"(('data', -1),)\" (every device on the data axis)"


def _spec(mesh_spec, what: str) -> tuple[list[str], list[int]]:
  names, sizes = [], []
  if isinstance(mesh_spec, str) or not isinstance(mesh_spec, (list, tuple)):
    raise errors.ConfigError(f'{what}={mesh_spec!r}: give a tuple of (axis, size) pairs, '
                             f'{_EXAMPLE}')
  for item in mesh_spec:
    if isinstance(item, str) or not isinstance(item, (list, tuple)) or len(item) != 2:
      raise errors.ConfigError(f'{what}={list(mesh_spec)}: each entry is an (axis, size) '
                               f'pair, {_EXAMPLE}')
    name = str(item[0])
    if name not in AXES:
      raise errors.ConfigError(f'{what}={list(mesh_spec)}: unknown mesh axis {item[0]!r}; '
                               f'use {", ".join(AXES)}')
    if name in names:
      raise errors.ConfigError(f'{what}={list(mesh_spec)} names the axis {name!r} twice: '
                               'give each axis once')
    try:
      size = int(item[1])
    except (TypeError, ValueError):
      size = None
    if size is None or size != item[1] or not (size >= 1 or size == -1):
      raise errors.ConfigError(f'{what}={list(mesh_spec)}: the size of {name!r} is '
                               f'{item[1]!r}; use an integer >= 1, or -1 for all remaining '
                               'devices')
    names.append(name)
    sizes.append(size)
  return names, sizes


def check_spec(config) -> None:
  """config.mesh / mesh_dcn / partitioning well formed (without looking at the devices:
  `mesh_from_config` checks the sizes against them). Raises errors.ConfigError."""
  _, sizes = _spec(config.mesh, 'config.mesh')
  _, dcn_sizes = _spec(config.mesh_dcn, 'config.mesh_dcn')
  if sizes.count(-1) > 1:
    raise errors.ConfigError(f'config.mesh={list(config.mesh)} has more than one -1 size: '
                             'give every axis but one its size')
  if -1 in dcn_sizes:
    raise errors.ConfigError(f'config.mesh_dcn={list(config.mesh_dcn)}: sizes must be >= 1 '
                             '(the number of slices / nodes along each axis)')


def make_mesh(mesh_spec: Sequence[tuple[str, int]], devices=None,
              dcn_spec: Sequence[tuple[str, int]] = ()) -> Mesh:
  """The mesh over `devices` (default: every device of every process).

  mesh_spec: (axis, size) pairs (within a slice / node when dcn_spec is given); axes left
  out have size 1, and the mesh always has the axes AXES in that order.
  dcn_spec: (axis, size) pairs of the across-slice part of each axis.
  Raises errors.ConfigError (naming config.mesh / mesh_dcn) for a spec that cannot work.
  """
  devices = list(devices if devices is not None else jax.devices())
  names, sizes = _spec(mesh_spec, 'config.mesh')
  dcn_names, dcn_sizes = _spec(dcn_spec, 'config.mesh_dcn')
  dcn = {n: s for n, s in zip(dcn_names, dcn_sizes)}
  if any(s < 1 for s in dcn_sizes):
    raise errors.ConfigError(f'config.mesh_dcn={list(dcn_spec)}: sizes must be >= 1 (the '
                             'number of slices / nodes along each axis)')
  for n in dcn:
    if n not in names:
      names.append(n)
      sizes.append(1)
  n_dcn = int(np.prod(dcn_sizes)) if dcn_sizes else 1
  if len(devices) % n_dcn:
    raise errors.ConfigError(f'config.mesh_dcn={list(dcn_spec)}: {len(devices)} devices do '
                             f'not split into {n_dcn} slices / nodes; set it to the slices '
                             '(nodes) this job has, or leave it empty')
  per_granule = len(devices) // n_dcn
  if sizes.count(-1) > 1:
    raise errors.ConfigError(f'config.mesh={list(mesh_spec)} has more than one -1 size: '
                             'give every axis but one its size')
  known = int(np.prod([s for s in sizes if s != -1]))
  where = ' per slice / node' if n_dcn > 1 else ''
  if -1 in sizes:
    if per_granule % known:
      raise errors.ConfigError(f'config.mesh={list(mesh_spec)}: the {per_granule} devices'
                               f'{where} are not divisible by {known}: choose sizes whose '
                               f'product divides {per_granule}')
    sizes[sizes.index(-1)] = per_granule // known
  if int(np.prod(sizes)) != per_granule:
    raise errors.ConfigError(f'config.mesh={list(mesh_spec)} needs {int(np.prod(sizes))} '
                             f'devices{where}, this job has {per_granule}: make the sizes '
                             f'multiply to {per_granule}, or let one axis take the rest '
                             "with -1, e.g. --config.mesh=\"(('data', -1),)\"")
  # Every mesh has the three axes, in this order (tensor innermost: its collectives run
  # every layer, so it gets the closest devices); the ones config.mesh leaves out are 1.
  size_of = dict(zip(names, sizes))
  names = list(AXES)
  sizes = [size_of.get(n, 1) for n in names]
  axis_types = (AxisType.Auto,) * len(names)
  if n_dcn == 1:
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=axis_types, devices=devices)
  dcn_shape = tuple(dcn.get(n, 1) for n in names)
  # TPU devices know their slice; elsewhere each process (node) is one granule.
  by_process = devices[0].platform != 'tpu' or not hasattr(devices[0], 'slice_index')
  attr = 'process_index' if by_process else 'slice_index'
  granules = len({getattr(d, attr) for d in devices})
  if granules != n_dcn:
    what = 'processes (nodes)' if by_process else 'TPU slices'
    raise errors.ConfigError(f'config.mesh_dcn={list(dcn_spec)} spans {n_dcn} slices / nodes, '
                             f'but the devices come from {granules} {what}: set '
                             'config.mesh_dcn to match or leave it empty')
  array = mesh_utils.create_hybrid_device_mesh(tuple(sizes), dcn_shape, devices,
                                               process_is_granule=by_process)
  return Mesh(array, tuple(names), axis_types=axis_types)


def mesh_from_config(config, devices=None) -> Mesh:
  return make_mesh(config.mesh, devices, config.mesh_dcn)


def batch_axes(mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over (those of BATCH_AXES the mesh has)."""
  return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's batch axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def over_batch_axes(named: NamedSharding, shape: Sequence[int]) -> NamedSharding:
  """`named` with the mesh's batch axes it does not use yet (size > 1) added to the first
  dimension, largest first, they divide: each device then holds 1/N of the array (the
  optimizer state over the batch axes, ZeRO stage 1). An array no dimension of which they
  divide keeps `named`."""
  mesh = named.mesh
  spec = list(named.spec) + [None] * (len(shape) - len(named.spec))
  used = {a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)}
  free = tuple(a for a in batch_axes(mesh) if a not in used and mesh.shape[a] > 1)
  if not free:
    return named
  n = int(np.prod([mesh.shape[a] for a in free]))
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    e = spec[dim]
    have = () if e is None else ((e,) if isinstance(e, str) else tuple(e))
    size = int(np.prod([mesh.shape[a] for a in have]))
    if shape[dim] % (size * n) == 0:
      new = have + free
      spec[dim] = new[0] if len(new) == 1 else new
      return NamedSharding(mesh, P(*spec))
  return named


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def describe(mesh) -> str:
  return ' x '.join(f'{n} {s}' for n, s in mesh.shape.items())


def put_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
  """Host-local batch (this process's slice) -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
