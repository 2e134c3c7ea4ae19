"""TPU chips and slice topologies, named as users write them, for compiling ahead of time.

One table of chip types (CHIPS): each chip's HBM, peak dense bf16 FLOP/s and HBM bandwidth
(the vendor's published figures), how a slice name counts it and how the TPU compiler names
it. `parse('v5e-256')` / `parse('v5p-128')` / `parse('v5p:4x4x4')` gives a Topology;
`devices(topology, num_slices)` the compile-only devices of that slice (or slices) from
`jax.experimental.topologies.get_topology_desc`, on any x86 machine with libtpu installed
(the `tpu` extra): no TPU is touched, nothing runs, only the compiler.

Slice names: v4-N and v5p-N count TensorCores (two per chip, driven as one device:
'megacore'), so v5p-128 is 64 chips; v5e-N and v6e-N count chips. The chips of a name lie
on the most balanced grid of its generation's dimensions (2-D for v5e / v6e, 3-D for
v4 / v5p), e.g. v5e-256 = 16x16 and v5p-128 = 4x4x4; other shapes in the explicit form
GEN:AxB[xC].
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from denseav_jax import errors

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str            # As users write it: v4, v5e, v5p, v6e.
  compiler_name: str   # The generation as libtpu's topology names spell it.
  hbm_bytes: int       # Per chip.
  peak_bf16_flops: float  # Dense bf16 FLOP/s per chip.
  hbm_bytes_per_s: float
  dims: int            # Dimensions of a slice's chip grid.
  cores_per_chip: int  # What a slice name counts per chip (TensorCores on megacore chips).
  chip_config: str     # libtpu's chip_config_name: one device per chip.


# Published per-chip figures (Cloud TPU system architecture pages).
CHIPS = {c.name: c for c in (
    Chip('v4', 'v4', 32 * GiB, 275e12, 1.2e12, 3, 2, 'megacore'),
    Chip('v5e', 'v5e', 16 * GiB, 197e12, 0.819e12, 2, 1, 'default'),
    Chip('v5p', 'v5p', 95 * GiB, 459e12, 2.765e12, 3, 2, 'megacore'),
    Chip('v6e', 'v6e', 32 * GiB, 918e12, 1.64e12, 2, 1, 'default'),
)}
ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v5': 'v5p', 'v6': 'v6e'}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  shape: tuple[int, ...]  # Chips along each dimension of one slice.

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    return f'{self.chip.name}-{self.chips * self.chip.cores_per_chip}'

  @property
  def accelerator_type(self) -> str:
    """The name a TPU VM's metadata gives the slice (v5e is 'v5litepod' there)."""
    prefix = 'v5litepod' if self.chip.name == 'v5e' else self.chip.name
    return f'{prefix}-{self.chips * self.chip.cores_per_chip}'

  @property
  def compiler_name(self) -> str:
    return f'{self.chip.compiler_name}:{"x".join(map(str, self.shape))}'

  def describe(self) -> str:
    return f'{self.name} ({"x".join(map(str, self.shape))} {self.chip.name} chips)'


def balanced_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The most balanced power-of-two grid of `chips` chips, small dimensions first (e.g.
  64 chips in 3-D: 4x4x4; 32: 2x4x4; 4: 2x2x1; 256 in 2-D: 16x16)."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f'{chips} chips is not a power of two')
  k = chips.bit_length() - 1
  shape = sorted(2 ** (k // dims + (i < k % dims)) for i in range(dims))
  return tuple([s for s in shape if s > 1] + [s for s in shape if s == 1])


_EXAMPLES = 'e.g. v5e-8, v4-32, v5p-128, v6e-64, or the chip grid as v5p:4x4x4 / v5e:2x2'


def chip(name: str) -> Chip:
  key = ALIASES.get(name.lower(), name.lower())
  if key not in CHIPS:
    raise errors.ConfigError(f'unknown TPU generation {name!r}: use one of '
                             f'{", ".join(CHIPS)}')
  return CHIPS[key]


def parse(name: str) -> Topology:
  """A slice from its name (`v5e-256`, `v5p-128`) or chip grid (`v5p:4x4x4`)."""
  text = name.strip()
  m = re.fullmatch(r'([a-z0-9]+):(\d+(?:x\d+){1,2})', text, re.I)
  if m:
    c = chip(m.group(1))
    shape = tuple(int(v) for v in m.group(2).lower().split('x'))
    if len(shape) not in (c.dims, c.dims - 1) or min(shape) < 1:
      raise errors.ConfigError(f'topology {name!r}: a {c.name} slice is a {c.dims}-D grid '
                               f'of chips ({_EXAMPLES})')
    shape += (1,) * (c.dims - len(shape))
    return Topology(c, shape)
  m = re.fullmatch(r'([a-z0-9]+)-(\d+)', text, re.I)
  if not m:
    raise errors.ConfigError(f'topology {name!r} is not a slice name ({_EXAMPLES})')
  c = chip(m.group(1))
  count = int(m.group(2))
  if count % c.cores_per_chip:
    raise errors.ConfigError(f'topology {name!r}: {c.name}-N counts TensorCores, '
                             f'{c.cores_per_chip} per chip; N must be a multiple of '
                             f'{c.cores_per_chip}')
  chips = count // c.cores_per_chip
  try:
    shape = balanced_shape(chips, c.dims)
  except ValueError:
    raise errors.ConfigError(f'topology {name!r}: {chips} chips is not a power of two; '
                             f'give the chip grid instead ({_EXAMPLES})') from None
  return Topology(c, shape)


def _host_bounds(shape: tuple[int, ...]) -> tuple[int, int, int]:
  """Chips per host: 2x2x1 (four chips a host), smaller only for smaller slices."""
  full = tuple(shape) + (1,) * (3 - len(shape))
  return tuple(min(b, s) for b, s in zip((2, 2, 1), full))


def _wrap(topo: Topology) -> tuple[bool, bool, bool]:
  """Which dimensions close into a ring: full 3-D cubes (every dimension a multiple of 4)
  on v4 / v5p, dimensions of 16 chips on v5e / v6e."""
  full = tuple(topo.shape) + (1,) * (3 - len(topo.shape))
  if topo.chip.dims == 3:
    cube = all(s % 4 == 0 for s in full)
    return tuple(cube for _ in full)
  return tuple(s == 16 for s in full[:2]) + (False,)


def libtpu_available() -> bool:
  """Whether libtpu (the TPU compiler) is installed: the `tpu` extra."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return xla_bridge.get_tpu_library_path() is not None


def devices(topo: Topology, num_slices: int = 1) -> list:
  """The compile-only devices of `num_slices` slices of `topo` (no TPU needed)."""
  if not libtpu_available():
    raise errors.UserError('compiling for a TPU topology needs libtpu: pip install '
                           '"jax[tpu]==0.10.2" (the tpu extra: pip install -e ".[tpu]")')
  # No TPU metadata server to ask on a laptop or a CPU VM; and no TPU is opened, so another
  # process compiling at the same time (or a test's subprocess) need not wait for libtpu's
  # one-process lock file.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # What libtpu would read from a TPU VM's metadata; without them it logs warnings (harmless
  # for compiling) about the accelerator type and the worker hostnames.
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', topo.accelerator_type)
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = dict(platform='tpu', topology_name=topo.compiler_name,
                chip_config_name=topo.chip.chip_config,
                chips_per_host_bounds=_host_bounds(topo.shape), num_slices=int(num_slices))
  try:
    desc = topologies.get_topology_desc(**kwargs, wrap=_wrap(topo))
  except TypeError:  # A libtpu without the wrap argument.
    desc = topologies.get_topology_desc(**kwargs)
  return list(desc.devices)


# Peak dense bf16 FLOP/s of one JAX device, by its device_kind (what a running job sees):
# a TPU v4 / v5p device is a whole (megacore) chip; NVIDIA's figures are the SXM parts'
# dense (no sparsity) bf16 tensor-core peaks. Checked in order: the first substring of the
# lower-cased device_kind that matches.
DEVICE_PEAKS = (
    ('v5 lite', CHIPS['v5e'].peak_bf16_flops), ('v5e', CHIPS['v5e'].peak_bf16_flops),
    ('v6 lite', CHIPS['v6e'].peak_bf16_flops), ('v6e', CHIPS['v6e'].peak_bf16_flops),
    ('v5p', CHIPS['v5p'].peak_bf16_flops), ('tpu v5', CHIPS['v5p'].peak_bf16_flops),
    ('tpu v4', CHIPS['v4'].peak_bf16_flops),
    ('h200', 989e12), ('h100 pcie', 756e12), ('h100', 989e12), ('a100', 312e12),
)


def device_peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of a device of this kind (jax.Device.device_kind), or None when
  it is not in DEVICE_PEAKS (a CPU, an unlisted GPU)."""
  kind = device_kind.lower()
  for key, peak in DEVICE_PEAKS:
    if key in kind:
      return peak
  return None
