"""Slice names as users write them -> chip grids and chip figures (parallel/topologies.py);
no libtpu needed."""

import pytest

from denseav_jax import errors
from denseav_jax.parallel import topologies


@pytest.mark.parametrize('name, chip, shape, chips', [
    ('v5e-8', 'v5e', (2, 4), 8),
    ('v5e-256', 'v5e', (16, 16), 256),
    ('v5e-4', 'v5e', (2, 2), 4),
    ('v6e-64', 'v6e', (8, 8), 64),
    ('v4-8', 'v4', (2, 2, 1), 4),  # v4 / v5p names count TensorCores: two per chip.
    ('v4-32', 'v4', (2, 2, 4), 16),
    ('v5p-128', 'v5p', (4, 4, 4), 64),
    ('v5p-64', 'v5p', (2, 4, 4), 32),
    ('v5p:4x4x4', 'v5p', (4, 4, 4), 64),
    ('v5e:2x2', 'v5e', (2, 2), 4),
    ('v4:2x2x1', 'v4', (2, 2, 1), 4),
    ('v5litepod-16', 'v5e', (4, 4), 16),
])
def test_parse(name, chip, shape, chips):
  topo = topologies.parse(name)
  assert (topo.chip.name, topo.shape, topo.chips) == (chip, shape, chips)


def test_names_round_trip():
  assert topologies.parse('v5p:4x4x4').name == 'v5p-128'
  assert topologies.parse('v5e:16x16').name == 'v5e-256'
  assert topologies.parse('v5p-128').compiler_name == 'v5p:4x4x4'


@pytest.mark.parametrize('name', ['v5e', 'v7x-8', 'v5p-6', 'v5e-12', 'v5e:2x2x2x2', 'x:2x2'])
def test_bad_names_say_what_to_write(name):
  with pytest.raises(errors.ConfigError, match='v5p'):
    topologies.parse(name)


def test_chip_table():
  """One table: HBM, peak bf16 FLOP/s and HBM bandwidth per chip type."""
  assert set(topologies.CHIPS) == {'v4', 'v5e', 'v5p', 'v6e'}
  assert topologies.CHIPS['v5e'].hbm_bytes == 16 * 2**30
  for c in topologies.CHIPS.values():
    assert c.hbm_bytes >= 16 * 2**30 and 1e14 < c.peak_bf16_flops < 1e15
    assert c.hbm_bytes_per_s > 5e11


@pytest.mark.parametrize('kind, peak', [
    ('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5p', 459e12),
    ('TPU v5', 459e12), ('TPU v6 lite', 918e12), ('NVIDIA H100 80GB HBM3', 989e12),
    ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H200', 989e12), ('NVIDIA A100-SXM4-80GB', 312e12),
    ('cpu', None), ('NVIDIA GeForce RTX 4090', None)])
def test_device_peaks_for_mfu(kind, peak):
  """The peak a running job's MFU is taken against, from jax.Device.device_kind; none for
  a CPU or an unlisted GPU (MFU then stays off)."""
  assert topologies.device_peak_flops(kind) == peak
