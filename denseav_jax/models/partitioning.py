"""Logical axis names for parameters and activations, and the rules mapping them to the mesh.

Every parameter of the towers and aligners is created with logical axis names
(`flax.linen.with_logical_partitioning`), e.g. a ViT MLP kernel is ('embed', 'mlp').
Activations are annotated with `constrain(x, ('batch', 'length', 'embed'))`. A rule set maps
logical names to mesh axes; `config.partitioning` picks a preset or lists rules:

  dp       parameters replicated, batch over 'data' (the default).
  fsdp     also every parameter's 'embed' axis over 'data' (ZeRO-3 style: XLA all-gathers
           each layer's weights where they are used and reduce-scatters their gradients).
  tp       'mlp' and 'heads' (FFN hidden, attention projections) over a 'model' mesh axis.
  fsdp_tp  both.

A rule naming a mesh axis that the mesh lacks, or that does not divide the dimension, is
dropped for that array (it stays replicated along that dimension), so one config runs on
any mesh.
"""

import contextlib
import threading
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Logical names used by the models:
#   batch   examples              length  tokens / time steps / patches
#   embed   a tower's model width  mlp     FFN hidden width      heads  attention q/k/v width
#   conv    conv front-end channels        code    aligner output width (code_dim)
Rules = tuple[tuple[str, Any], ...]

PRESETS: dict[str, Rules] = {
    'dp': (('batch', 'data'),),
    'fsdp': (('batch', 'data'), ('embed', 'data'), ('conv', 'data'), ('code', 'data')),
    'tp': (('batch', 'data'), ('mlp', 'model'), ('heads', 'model')),
    'fsdp_tp': (('batch', 'data'), ('embed', 'data'), ('conv', 'data'), ('code', 'data'),
                ('mlp', 'model'), ('heads', 'model')),
}


def rules_from_config(spec) -> Rules:
  """`config.partitioning`: a preset name or a list of (logical name, mesh axis|None)."""
  if isinstance(spec, str):
    if spec not in PRESETS:
      raise ValueError(f'config.partitioning={spec!r} is not one of {sorted(PRESETS)} '
                       'or a list of (logical axis, mesh axis) pairs')
    return PRESETS[spec]
  rules = []
  for item in spec:
    if len(item) != 2:
      raise ValueError(f'config.partitioning rule {item!r} is not a (logical, mesh axis) pair')
    rules.append((str(item[0]), item[1]))
  return tuple(rules)


def mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules) -> P:
  """Logical names of one array -> PartitionSpec on `mesh` (each mesh axis used once; a
  mesh axis that is absent or does not divide the dimension is dropped)."""
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
      if a in mesh.shape and a not in used and dim % (size * mesh.shape[a]) == 0:
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


def param_bytes(params) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params)))
