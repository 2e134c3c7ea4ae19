"""Model-FLOPs utilisation of the running train step (docs/pods.md#mfu).

MFU = FLOPs the step's program performs per device / (step time x the device's peak
dense bf16 FLOP/s). The FLOPs are XLA's own count of the jitted step (its cost analysis,
the same count `python -m denseav_jax.compile` plans with), divided over the devices; the
peak is looked up from the device kind (parallel/topologies.py: TPU v4 / v5e / v5p / v6e,
NVIDIA A100 / H100 / H200). On a CPU, or a device kind not in the table, MFU is off unless
config.peak_flops_per_device gives the peak.
"""

from __future__ import annotations

import jax

from denseav_jax.parallel import topologies


def peak_flops(config) -> float | None:
  """The peak FLOP/s of one of this job's devices, or None (MFU off)."""
  if float(config.peak_flops_per_device) > 0:
    return float(config.peak_flops_per_device)
  return topologies.device_peak_flops(jax.devices()[0].device_kind)


def step_flops(jitted, *args) -> float | None:
  """FLOPs per device of one call of `jitted(*args)`, from XLA's cost analysis of the
  lowered step (no second compile); None when XLA gives no count."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get('flops', 0.0))
  return flops / jax.device_count() if flops > 0 else None

