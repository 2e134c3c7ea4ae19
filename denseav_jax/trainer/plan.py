"""Ahead-of-time plans: each phase's real train step compiled for a TPU slice (docs/pods.md).

`plan(config, topology, ...)` builds the slice's compile-only devices
(`parallel.topologies`), the config's own mesh over them, the abstract train state
(`state.abstract_state`) and a batch of shapes only, then lowers and compiles the step
`step.make_train_step` builds, with the TPU compiler, for each phase. Nothing runs: the
figures come from the compiled program (`memory_analysis`, `cost_analysis`), per chip:

  arguments      the state (parameters, optimizer state) and the batch held by one chip
  temporaries    the compiler's scratch for activations and gradients at its peak
  code           the program itself
  total          arguments + outputs not aliased to them + temporaries + code, against the
                 chip's HBM
  flops          per chip per step (the partitioned program's count), and per example
  bytes          HBM bytes the step reads and writes
  roofline       the larger of flops / peak and bytes / HBM bandwidth: no step is faster

A step that does not fit is `DoesNotFit`: one line with what it needs, what the chip has and
the levers to try.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
import numpy as np

from denseav_jax import errors
from denseav_jax.data import examples
from denseav_jax.models import denseav
from denseav_jax.parallel import sharding
from denseav_jax.parallel import topologies
from denseav_jax.trainer import checks
from denseav_jax.trainer import flops as flops_lib
from denseav_jax.trainer import mfu as mfu_lib
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

GiB = topologies.GiB


class DoesNotFit(errors.DenseAVError):
  """A step whose memory exceeds the chip's HBM (the message is the one line to show)."""

  def __init__(self, message: str, needs: float | None = None, has: float | None = None):
    super().__init__(message)
    self.needs, self.has = needs, has


def phases(config, which: str) -> list[int]:
  """'1', '2' or 'all' -> the phases to compile (a config without phase 1 has only 2)."""
  present = [1, 2] if optim.num_phases(config) == 2 else [2]
  if which == 'all':
    return present
  if which not in ('1', '2') or int(which) not in present:
    raise errors.UserError(f'--phase={which}: this config has phase(s) '
                           f'{", ".join(map(str, present))} (or all)')
  return [int(which)]


def mesh_for(config, devices):
  """The config's mesh over `devices`, after every check that needs no files."""
  checks.check_static(config, paths=False)
  mesh = sharding.mesh_from_config(config, devices)
  checks.check_batch(config, mesh)
  return mesh


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global training batch as shapes, split over the mesh's batch axes."""
  shard = sharding.batch_sharding(mesh)
  shapes = examples.Spec.from_config(config).train_shapes()
  return {k: jax.ShapeDtypeStruct((config.batch_size,) + shape, dtype, sharding=shard)
          for k, (shape, dtype) in shapes.items()}


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, 'sharding', None) else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


# The TPU compiler's out-of-memory messages, e.g. "the total memory required for HLO
# temporaries (81.74G) exceeds available HBM (15.75G)" or "Used 20.5G of 15.5G hbm".
_OOM = (re.compile(r'required[^(]*\(([\d.]+)([KMGT]?)\)\s+exceeds available HBM\s+'
                   r'\(([\d.]+)([KMGT]?)\)', re.I),
        re.compile(r'Used\s+([\d.]+)([KMGT]?)\s+of\s+([\d.]+)([KMGT]?)\s+hbm', re.I))
_UNIT = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def _oom_bytes(message: str) -> tuple[float | None, float | None]:
  """(needed, available) bytes from the TPU compiler's out-of-memory message."""
  for pattern in _OOM:
    m = pattern.search(message)
    if m:
      return (float(m.group(1)) * _UNIT[m.group(2).upper()],
              float(m.group(3)) * _UNIT[m.group(4).upper()])
  return None, None


def _is_oom(message: str) -> bool:
  return 'RESOURCE_EXHAUSTED' in message or 'Ran out of memory' in message


def levers(config, mesh) -> str:
  """What to try when a step does not fit: an fsdp axis, rematerialisation, a smaller
  batch per chip."""
  out = []
  if mesh.shape.get('fsdp', 1) == 1:
    out.append("an fsdp axis (--config.mesh=\"(('fsdp', -1),)\": parameters and Adam state "
               'sharded)')
  remat = [t for t in ('image', 'audio') if config.model[t].remat == 'none']
  if remat:
    out.append('rematerialisation (' + ' '.join(
        f'--config.model.{t}.remat=full' for t in remat) + ')')
  dp = sharding.data_parallel_size(mesh)
  per_chip = config.batch_size // dp
  if config.model.tower_microbatches == 1 and per_chip > 1:
    out.append('the towers over chunks of the batch (--config.model.tower_microbatches=N, '
               f'N dividing {per_chip})')
  if config.opt_state_sharding == 'params' and dp > 1:
    out.append('Adam state over the batch axes (--config.opt_state_sharding=batch)')
  if config.frozen_dtype == 'float32':
    out.append('frozen weights in bf16 (--config.frozen_dtype=bfloat16)')
  out.append(f'a smaller batch per chip (now {config.batch_size // dp}; --find_max_batch '
             'finds the largest that fits)')
  return '; '.join(out)


def does_not_fit(config, mesh, topo, phase: int, needs, has,
                 budget: bool = False) -> DoesNotFit:
  has = has or topo.chip.hbm_bytes
  need_text = (f'needs at least {needs / GiB:.2f} GiB per chip' if needs else
               'needs more memory than the chip has')
  has_text = (f'the plan allows {has / GiB:.2f} GiB of the {topo.chip.name} chip\'s '
              f'{topo.chip.hbm_bytes / GiB:.2f} (--hbm_gib)' if budget else
              f'the {topo.chip.name} chip has {has / GiB:.2f} GiB for it')
  return DoesNotFit(
      f'phase {phase} at batch {config.batch_size} on {topo.name} does not fit: {need_text}, '
      f'{has_text}; try {levers(config, mesh)}', needs=needs, has=has)


def budget_bytes(topo, hbm_gib: float | None) -> int:
  """The HBM a plan may use per chip: the chip's, or less (`--hbm_gib`: room kept for
  something else, or a margin)."""
  if hbm_gib is None:
    return topo.chip.hbm_bytes
  if not 0 < hbm_gib * GiB <= topo.chip.hbm_bytes:
    raise errors.UserError(f'--hbm_gib={hbm_gib} must lie in (0, {topo.chip.hbm_bytes / GiB:g}]'
                           f': the {topo.chip.name} chip has {topo.chip.hbm_bytes / GiB:g} GiB')
  return int(hbm_gib * GiB)


def compile_phase(config, model, mesh, phase: int):
  """(compiled step, abstract state, abstract batch, seconds to lower and compile)."""
  tx = optim.make_optimizer(config, phase)
  abstract, shardings = state_lib.abstract_state(config, model, tx, mesh, phase)
  batch = abstract_batch(config, mesh)
  t0 = time.time()
  step = step_lib.make_train_step(config, model, tx, mesh, shardings, phase)
  compiled = step.lower(abstract, batch).compile()
  return compiled, abstract, batch, time.time() - t0


@dataclasses.dataclass
class PhasePlan:
  """One phase's compiled figures, per chip."""
  phase: int
  batch_size: int
  chips: int
  hbm_bytes: int
  params_bytes: int
  opt_state_bytes: int
  batch_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float
  bytes_accessed: float
  compile_s: float
  peak_flops: float
  hbm_bytes_per_s: float
  phase_steps: int
  mfu: float
  # The hand count (trainer/flops.py) of the whole step, over every chip: its linear
  # (towers, aligners) and quadratic (similarity) parts; None for an architecture it does
  # not cover.
  hand_flops: float | None = None
  hand_linear_flops: float | None = None
  hand_quadratic_flops: float | None = None

  @property
  def total_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  @property
  def headroom_bytes(self) -> int:
    return self.hbm_bytes - self.total_bytes

  @property
  def model_flops(self) -> float:
    """Per chip per step: the hand count over the chips where it applies, else XLA's count
    (which counts a loop's body once: towers over chunks and the similarity's ring are
    loops, so XLA's figure is low for them)."""
    return self.hand_flops / self.chips if self.hand_flops else self.flops

  @property
  def flops_per_example(self) -> float:
    return self.model_flops * self.chips / self.batch_size

  @property
  def roofline_s(self) -> float:
    return max(self.model_flops / self.peak_flops, self.bytes_accessed / self.hbm_bytes_per_s)

  @property
  def examples_per_s_per_chip(self) -> float:
    return self.batch_size / self.chips / self.roofline_s

  @property
  def step_s_at_mfu(self) -> float:
    return self.model_flops / (self.peak_flops * self.mfu)

  @property
  def schedule_s_at_mfu(self) -> float:
    return self.phase_steps * self.step_s_at_mfu

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> PhasePlan:
    """The plan from its `as_dict()` (e.g. a plan JSON's phase), derived figures dropped."""
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

  def as_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    for k in ('total_bytes', 'headroom_bytes', 'model_flops', 'flops_per_example', 'roofline_s',
              'examples_per_s_per_chip', 'step_s_at_mfu', 'schedule_s_at_mfu'):
      out[k] = getattr(self, k)
    return out


def plan_phase(config, model, mesh, topo, phase: int, mfu: float = 0.4,
               budget: int | None = None) -> PhasePlan:
  """Compiles `phase`'s step for `mesh` (over `topo`'s devices); DoesNotFit when it needs
  more than the chip's HBM (or than `budget` bytes, when that is less)."""
  try:
    compiled, abstract, batch, seconds = compile_phase(config, model, mesh, phase)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if not _is_oom(message):
      raise
    raise does_not_fit(config, mesh, topo, phase, *_oom_bytes(message)) from None
  mem = compiled.memory_analysis()
  xla = mfu_lib.cost_analysis(compiled)
  result = PhasePlan(
      phase=phase, batch_size=int(config.batch_size), chips=mesh.devices.size,
      hbm_bytes=topo.chip.hbm_bytes, params_bytes=per_device_bytes(abstract.params),
      opt_state_bytes=per_device_bytes(abstract.opt_state), batch_bytes=per_device_bytes(batch),
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      code_bytes=int(mem.generated_code_size_in_bytes),
      flops=float(xla.get('flops', 0.0)), bytes_accessed=float(xla.get('bytes accessed', 0.0)),
      compile_s=seconds, peak_flops=topo.chip.peak_bf16_flops,
      hbm_bytes_per_s=topo.chip.hbm_bytes_per_s,
      phase_steps=int(optim.phase_length(config, phase)), mfu=float(mfu))
  try:
    hand = flops_lib.count(config, config.batch_size, phase)
    result.hand_flops = hand['total']
    result.hand_linear_flops, result.hand_quadratic_flops = hand['linear'], hand['quadratic']
  except ValueError:
    pass
  return check_fits(result, config, mesh, topo, budget)


def check_fits(result: PhasePlan, config, mesh, topo, budget: int | None = None) -> PhasePlan:
  """`result` when its total fits the chip's HBM (and `budget` bytes, when that is less);
  else DoesNotFit with the one line."""
  if result.total_bytes > result.hbm_bytes:
    raise does_not_fit(config, mesh, topo, result.phase, result.total_bytes, result.hbm_bytes)
  if budget is not None and budget < result.hbm_bytes and result.total_bytes > budget:
    raise does_not_fit(config, mesh, topo, result.phase, result.total_bytes, budget,
                       budget=True)
  return result


def with_batch(config, batch_size: int, chunk: int = 1, dp: int = 1):
  """A copy of `config` with another global batch; with `chunk` > 1 the towers run over
  chunks of that many examples per device (`model.tower_microbatches` follows the batch)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = int(batch_size)
    if chunk > 1:
      config.model.tower_microbatches = int(batch_size) // dp // chunk
  return config


def plan(config, topology: str, num_slices: int = 1, phase: str = 'all',
         mfu: float = 0.4, log=print, hbm_gib: float | None = None) -> dict[str, Any]:
  """The plan of every phase asked for: {'topology', 'mesh', 'phases': [PhasePlan dict]}.
  Raises DoesNotFit for the first phase that does not fit (in `hbm_gib` per chip when
  given)."""
  config = with_slices(config, num_slices, log)
  topo = topologies.parse(topology)
  budget = budget_bytes(topo, hbm_gib)
  devices = topologies.devices(topo, num_slices)
  mesh = mesh_for(config, devices)
  model = denseav.build_model(config)
  out = dict(topology=topo.name, grid=topo.compiler_name, num_slices=int(num_slices),
             chips=len(devices), chip=topo.chip.name, mesh=dict(mesh.shape),
             batch_size=int(config.batch_size), budget_bytes=budget, phases=[])
  for p in phases(config, phase):
    log(f'compiling phase {p} for {topo.describe()} x {num_slices} slice(s), mesh '
        f'{sharding.describe(mesh)}, global batch {config.batch_size} ...')
    out['phases'].append(plan_phase(config, model, mesh, topo, p, mfu, budget).as_dict())
  return out


def with_slices(config, num_slices: int, log=print):
  """`config` for `num_slices` slices: a config without mesh_dcn gets its data axis across
  the slices (only the gradient reduction crosses the data-centre network)."""
  if num_slices <= 1 or config.mesh_dcn:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh_dcn = (('data', int(num_slices)),)
  log(f'config.mesh_dcn was empty: using (("data", {num_slices}),) across the slices')
  return config


def gib(n) -> str:
  return f'{n / GiB:.2f}'


def size(n) -> str:
  """GiB, or MiB below a tenth of a GiB (the small test configs)."""
  return f'{n / GiB:.2f} GiB' if abs(n) >= GiB / 10 else f'{n / 2**20:.1f} MiB'


def format_phase(p: dict[str, Any]) -> str:
  """One phase's plan as lines of text."""
  rows = [
      ('parameters', size(p['params_bytes'])),
      ('optimizer state', size(p['opt_state_bytes'])),
      ('batch', size(p['batch_bytes'])),
      ('arguments (all)', size(p['argument_bytes'])),
      ('outputs not aliased', size(p['output_bytes'] - p['alias_bytes'])),
      ('temporaries', size(p['temp_bytes'])),
      ('code', size(p['code_bytes'])),
      ('total', f'{size(p["total_bytes"])} of {gib(p["hbm_bytes"])} GiB HBM '
                f'(headroom {size(p["headroom_bytes"])})'),
      ('FLOPs per step', f'{p["model_flops"]:.3e} per chip, {p["flops_per_example"]:.3e} per '
                         'example' + (' (hand count)' if p.get('hand_flops') else ' (XLA)')),
      ('XLA\'s count', f'{p["flops"]:.3e} per chip (a loop\'s body counted once)'),
      ('bytes accessed', f'{p["bytes_accessed"]:.3e} per chip per step (XLA)'),
  ]
  if p.get('hand_flops'):
    compiled = p['flops'] * p['chips']
    rows.append(('hand count', f'{p["hand_flops"]:.3e} per step: towers '
                               f'{p["hand_linear_flops"]:.3e}, similarity '
                               f'{p["hand_quadratic_flops"]:.3e} '
                               f'({100 * p["hand_quadratic_flops"] / p["hand_flops"]:.1f} %); '
                               f'XLA / hand = {compiled / p["hand_flops"]:.3f}'))
  rows += [
      ('roofline step', f'{p["roofline_s"] * 1e3:.1f} ms ('
                        f'{p["examples_per_s_per_chip"]:.1f} examples/s per chip)'),
      (f'at MFU {p["mfu"]:.2f}', f'{p["step_s_at_mfu"] * 1e3:.1f} ms per step; the phase\'s '
                                 f'{p["phase_steps"]:,} steps in '
                                 f'{p["schedule_s_at_mfu"] / 3600:.1f} h'),
      ('compile', f'{p["compile_s"]:.1f} s on this machine'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'  {k:<{width}}  {v}' for k, v in rows)


def format_plan(result: dict[str, Any]) -> str:
  """The plan (or find_max_batch's result) as text: per phase, per chip."""
  mesh = ' x '.join(f'{k} {v}' for k, v in result['mesh'].items())
  head = (f'{result["topology"]} ({result["grid"]}, {result["num_slices"]} slice(s), '
          f'{result["chips"]} chips), mesh {mesh}')
  if result.get('budget_bytes') and result['phases']:
    chip_hbm = (result['phases'][0].get('plan') or result['phases'][0]).get('hbm_bytes')
    if chip_hbm and result['budget_bytes'] < chip_hbm:
      head += f'; planned within {gib(result["budget_bytes"])} GiB per chip (--hbm_gib)'
  lines = [head]
  for p in result['phases']:
    if 'max_batch_size' in p:
      nxt = (f'; {p["next_batch_size"]} does not fit' if p['next_batch_size'] else
             ' (the largest tried)')
      lines.append(f'phase {p["phase"]}: largest batch that fits: {p["max_batch_size"]}'
                   f'{nxt} ({p["compiles"]} compiles)')
      if p.get('next_error'):
        lines.append(f'  {p["next_error"]}')
      p = p['plan']
      if p is None:
        continue
    lines.append(f'phase {p["phase"]}, global batch {p["batch_size"]}, per chip:')
    lines.append(format_phase(p))
  return '\n'.join(lines)


def hand_count_plan(config, topology: str, num_slices: int = 1, phase: str = 'all',
                    mfu: float = 0.4) -> dict[str, Any]:
  """The hand count of each phase (trainer/flops.py) on the slice, no compile: FLOPs per
  step and per chip, the step at `mfu` of the chips' peak and the phase's schedule."""
  topo = topologies.parse(topology)
  chips = topo.chips * int(num_slices)
  out = dict(topology=topo.name, chips=chips, chip=topo.chip.name,
             batch_size=int(config.batch_size), mfu=float(mfu), phases=[])
  for p in phases(config, phase):
    try:
      count = flops_lib.count(config, config.batch_size, p)
    except ValueError as e:
      raise errors.UserError(f'--hand_count: {e}') from None
    step_s = count['total'] / chips / (topo.chip.peak_bf16_flops * mfu)
    out['phases'].append(dict(count, flops_per_chip=count['total'] / chips, step_s=step_s,
                              examples_per_s=config.batch_size / step_s,
                              schedule_s=step_s * count['phase_steps']))
  return out


def format_hand_count(result: dict[str, Any]) -> str:
  lines = [f'{result["topology"]} ({result["chips"]} {result["chip"]} chips), global batch '
           f'{result["batch_size"]}, hand count (no compile), at MFU {result["mfu"]:.2f}:']
  for p in result['phases']:
    lines.append(
        f'  phase {p["phase"]}: {p["total"]:.3e} FLOPs per step (towers {p["linear"]:.3e}, '
        f'similarity {p["quadratic"]:.3e} = {100 * p["quadratic_fraction"]:.1f} %), '
        f'{p["flops_per_chip"]:.3e} per chip; {p["step_s"] * 1e3:.1f} ms per step, '
        f'{p["examples_per_s"]:,.0f} examples/s; {p["phase_steps"]:,} steps in '
        f'{p["schedule_s"] / 3600:.1f} h')
  return '\n'.join(lines)
