"""Model-FLOPs utilisation of the running train step (docs/pods.md#mfu).

MFU = model FLOPs of a step per device / (step time x the device's peak dense bf16
FLOP/s). The model FLOPs are the hand count of the step (trainer/flops.py: the towers',
aligners' and similarity's matrix products, with the backward passes the phase runs;
rematerialisation is not counted, as MFU conventions have it), or XLA's count of the
lowered step for an architecture the hand count does not cover; the peak is looked up from the device kind (parallel/topologies.py: TPU v4 / v5e / v5p / v6e,
NVIDIA A100 / H100 / H200). On a CPU, or a device kind not in the table, MFU is off unless
config.peak_flops_per_device gives the peak.
"""

from __future__ import annotations

import jax

from denseav_jax.parallel import topologies
from denseav_jax.trainer import flops as flops_lib


def cost_analysis(program) -> dict[str, float]:
  """XLA's cost analysis of a lowered or compiled program (flops, bytes accessed, ...)."""
  out = program.cost_analysis()
  out = out[0] if isinstance(out, (list, tuple)) else out
  return dict(out or {})


def peak_flops(config) -> float | None:
  """The peak FLOP/s of one of this job's devices, or None (MFU off)."""
  if float(config.peak_flops_per_device) > 0:
    return float(config.peak_flops_per_device)
  return topologies.device_peak_flops(jax.devices()[0].device_kind)


def step_flops(config, phase: int, jitted, *args) -> float | None:
  """Model FLOPs per device of one step: the hand count of the config's architecture
  (trainer/flops.py) when it covers it, else XLA's count of the lowered step divided over
  the devices. (XLA counts a loop's body once, and the towers over chunks and the
  similarity's ring are loops, so its count is low for them; the hand count is not.)"""
  try:
    return flops_lib.count(config, config.batch_size, phase)['total'] / jax.device_count()
  except ValueError:
    pass
  flops = float(cost_analysis(jitted.lower(*args)).get('flops', 0.0))
  return flops / jax.device_count() if flops > 0 else None
