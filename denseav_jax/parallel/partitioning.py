"""Logical axis names for parameters and activations, and the rules mapping them to the mesh.

Every parameter of the towers and aligners is created with logical axis names
(`flax.linen.with_logical_partitioning`), e.g. a ViT MLP kernel is ('embed', 'mlp').
Activations are annotated with `constrain(x, ('batch', 'length', 'embed'))`. A rule set maps
logical names to mesh axes (denseav_jax.parallel.sharding: data, fsdp, tensor); the same rules place
parameters, their optimizer state (which follows its parameter) and activations.
`config.partitioning` picks a preset or lists rules:

  fsdp_tp  every parameter's 'embed' axis over 'fsdp' (ZeRO-3: XLA all-gathers each layer's
           weights where they are used and reduce-scatters their gradients), 'mlp' and
           'heads' (FFN hidden, attention projections) over 'tensor' (the default: with
           fsdp = tensor = 1 in config.mesh everything is replicated).
  fsdp     only the FSDP part.     tp   only the tensor-parallel part.
  dp       parameters replicated whatever the mesh.

In every preset the batch is split over data x fsdp. A rule naming a mesh axis that the
mesh lacks, or that does not divide the dimension, is dropped for that array (it stays
replicated along that dimension), so one config runs on any mesh;
`replicated_under_fsdp` lists the large arrays this leaves whole on every device.
"""

import contextlib
import threading
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from denseav_jax import errors
from denseav_jax.parallel import sharding

# Logical names used by the models:
#   batch   examples              length  tokens / time steps / patches
#   embed   a tower's model width  mlp     FFN hidden width      heads  attention q/k/v width
#   conv    conv front-end channels        code    aligner output width (code_dim)
Rules = tuple[tuple[str, Any], ...]

_BATCH = ('batch', ('data', 'fsdp'))
_FSDP = (('embed', 'fsdp'), ('conv', 'fsdp'), ('code', 'fsdp'))
_TP = (('mlp', 'tensor'), ('heads', 'tensor'))
PRESETS: dict[str, Rules] = {
    'dp': (_BATCH,),
    'fsdp': (_BATCH, *_FSDP),
    'tp': (_BATCH, *_TP),
    'fsdp_tp': (_BATCH, *_FSDP, *_TP),
}


def rules_from_config(spec) -> Rules:
  """`config.partitioning`: a preset name or a list of (logical name, mesh axis|None).
  Raises errors.ConfigError naming the key for anything else."""
  if isinstance(spec, str):
    if spec not in PRESETS:
      raise errors.ConfigError(f'config.partitioning={spec!r} is not one of {sorted(PRESETS)} '
                               'or a list of (logical axis, mesh axis) pairs')
    return PRESETS[spec]
  rules = []
  for item in spec:
    if isinstance(item, str) or len(item) != 2:
      raise errors.ConfigError(f'config.partitioning rule {item!r} is not a (logical, mesh '
                               "axis) pair, e.g. ('embed', 'fsdp')")
    axes = item[1] if isinstance(item[1], (list, tuple)) else (item[1],)
    bad = [a for a in axes if a is not None and a not in sharding.AXES]
    if bad:
      raise errors.ConfigError(f'config.partitioning rule {tuple(item)!r} names the mesh '
                               f'axis {bad[0]!r}; use one of {sharding.AXES} (or None)')
    rules.append((str(item[0]), item[1]))
  return tuple(rules)


def mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules) -> P:
  """Logical names of one array -> PartitionSpec on `mesh` (each mesh axis used once; a
  mesh axis that is absent, of size 1 or does not divide the dimension is dropped)."""
  table = {}
  for logical, axes in rules:
    table.setdefault(logical, axes)
  used = set()
  out = []
  for name, dim in zip(names, shape):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    keep = []
    size = 1
    for a in axes:
      if (a in mesh.shape and mesh.shape[a] > 1 and a not in used
          and dim % (size * mesh.shape[a]) == 0):
        keep.append(a)
        size *= mesh.shape[a]
    used.update(keep)
    out.append(tuple(keep) if len(keep) > 1 else (keep[0] if keep else None))
  return P(*out)


def split_boxed(boxed_params):
  """Boxed params from `model.init` -> (plain params, logical names per leaf as a
  PartitionSpec of logical names; P() for parameters created without names)."""
  def names(x):
    return P(*x.names) if isinstance(x, nn.LogicallyPartitioned) else P()
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  logical = jax.tree.map(names, boxed_params, is_leaf=is_box)
  return nn.meta.unbox(boxed_params), logical


def shardings_for(shapes, logical, mesh, rules: Rules):
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) and the matching tree
  of logical PartitionSpecs from `split_boxed`."""
  def one(x, names):
    if not len(names):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, mesh_spec(tuple(names), x.shape, mesh, rules))
  return jax.tree.map(one, shapes, logical)


# ---------------------------------------------------------------- activations

_CTX = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh, rules: Rules):
  """While tracing inside this context, `constrain` pins activations to the mesh."""
  prev = getattr(_CTX, 'value', None)
  _CTX.value = (mesh, rules)
  try:
    yield
  finally:
    _CTX.value = prev


def constrain(x, names: Sequence[str | None]):
  """Sharding constraint from logical names; a no-op outside `activation_sharding`."""
  ctx = getattr(_CTX, 'value', None)
  if ctx is None:
    return x
  mesh, rules = ctx
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, mesh_spec(names, x.shape, mesh, rules)))


def replicated_under_fsdp(shapes, shardings, mesh, min_bytes: int) -> list[tuple[str, int]]:
  """(path, bytes) of arrays of at least `min_bytes` left unsharded along the mesh's 'fsdp'
  axis (largest first): with FSDP every device holds them whole."""
  if mesh.shape.get('fsdp', 1) <= 1:
    return []
  out = []
  for path, x in jax.tree_util.tree_leaves_with_path(shapes):
    s = _leaf_at(shardings, path)
    nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    used = {a for part in s.spec if part is not None
            for a in ((part,) if isinstance(part, str) else part)}
    if nbytes >= min_bytes and 'fsdp' not in used:
      out.append(('/'.join(str(getattr(k, 'key', k)) for k in path), nbytes))
  return sorted(out, key=lambda t: -t[1])


def _leaf_at(tree, path):
  for k in path:
    tree = tree[getattr(k, 'key', getattr(k, 'idx', k))]
  return tree


def param_bytes(params) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params)))
