"""The largest batch that fits a TPU slice, by bisection on compiles of the real train step
(`python -m denseav_jax.compile --find_max_batch`; docs/pods.md)."""

from __future__ import annotations

from typing import Any

from denseav_jax import errors
from denseav_jax.models import denseav
from denseav_jax.parallel import sharding
from denseav_jax.parallel import topologies
from denseav_jax.trainer import checks
from denseav_jax.trainer import plan as plan_lib


def find_max_batch(config, topology: str, num_slices: int = 1, phase: str = 'all',
                   mfu: float = 0.4, limit_per_chip: int = 4096, start_batch: int = 0,
                   log=print, hbm_gib: float | None = None) -> dict[str, Any]:
  """The largest global batch (a multiple of the data-parallel size) whose step fits, per
  phase, by bisection on compiles: doubling from `start_batch` (rounded to the data-parallel
  size; default one example per data-parallel device) until a batch does not fit, then
  halving the gap (below `start_batch` when that does not fit). With the towers over
  chunks (`model.tower_microbatches` N > 1) the chunk stays as the config has it (its
  per-chip batch over N) and the search steps in whole chunks per chip, N following the
  batch. Returns {'phases': [{phase, max_batch_size, next_batch_size, next_needs_bytes,
  next_error, compiles, plan}]}; max_batch_size 0 when not even one unit per device fits."""
  config = plan_lib.with_slices(config, num_slices, log)
  topo = topologies.parse(topology)
  budget = plan_lib.budget_bytes(topo, hbm_gib)
  devices = topologies.devices(topo, num_slices)
  mesh = plan_lib.mesh_for(plan_lib.with_batch(config, sharding.data_parallel_size(
      sharding.mesh_from_config(config, devices)) * max(1, config.model.tower_microbatches)),
      devices)
  dp = sharding.data_parallel_size(mesh)
  chunk = tower_chunk(config, mesh)
  model = denseav.build_model(config)
  results = []
  for p in plan_lib.phases(config, phase):
    tried: dict[int, Any] = {}

    def attempt(units: int):
      if units not in tried:
        batch = units * chunk * dp
        try:
          tried[units] = plan_lib.plan_phase(plan_lib.with_batch(config, batch, chunk, dp),
                                             model, mesh, topo, p, mfu, budget)
          log(f'phase {p}: batch {batch} fits '
              f'({tried[units].total_bytes / plan_lib.GiB:.2f} GiB per chip)')
        except plan_lib.DoesNotFit as e:
          tried[units] = e
          log(f'phase {p}: batch {batch} does not fit')
      return tried[units]

    lo, hi = 0, max(1, start_batch // (dp * chunk))
    while hi * chunk <= limit_per_chip and isinstance(attempt(hi), plan_lib.PhasePlan):
      lo, hi = hi, hi * 2
    if hi * chunk > limit_per_chip:
      hi = None  # Everything tried fitted.
    while hi is not None and hi - lo > 1:
      mid = (lo + hi) // 2
      if isinstance(attempt(mid), plan_lib.PhasePlan):
        lo = mid
      else:
        hi = mid
    best = tried.get(lo) if lo else None
    results.append(dict(
        phase=p, max_batch_size=lo * chunk * dp,
        next_batch_size=hi * chunk * dp if hi else None,
        next_needs_bytes=getattr(tried.get(hi), 'needs', None) if hi else None,
        next_error=str(tried[hi]) if hi and hi in tried else None,
        compiles=len(tried), plan=best.as_dict() if best is not None else None))
  return dict(topology=topo.name, grid=topo.compiler_name, num_slices=int(num_slices),
              chips=len(devices), chip=topo.chip.name, mesh=dict(mesh.shape),
              data_parallel=dp, tower_chunk=chunk, budget_bytes=budget, phases=results)


def tower_chunk(config, mesh) -> int:
  """Examples per chunk of the towers per device: 1 without towers over chunks, else the
  config's per-device batch over `model.tower_microbatches` (which must divide it)."""
  n = config.model.tower_microbatches
  if n <= 1:
    return 1
  try:
    checks.check_batch(config, mesh)
  except errors.ConfigError as e:
    raise errors.UserError(f'--find_max_batch steps in the config\'s chunk of the towers '
                           f'(batch per device / {n}): {e}') from None
  return config.batch_size // sharding.data_parallel_size(mesh) // n
