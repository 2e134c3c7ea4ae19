"""Pieces every benchmark module shares: list-valued flags, the --out JSON file, the optional
PyTorch packages (`require`) and the command wrapper (`run_cli`)."""

import argparse
import os
import platform
import sys

from denseav_jax import io as io_lib
from denseav_jax import errors

# The setup.cfg extra with the PyTorch side of the benchmarks: torch, transformers (HuBERT)
# and safetensors, as denseav_jax.convert needs them.
TORCH_EXTRA = 'convert'


def require(module_name: str, what: str):
  """`module_name` imported, or errors.MissingExtra naming `pip install -e .[convert]`."""
  return errors.require(module_name, TORCH_EXTRA, what)


def run_cli(main, **kwargs):
  """Runs a benchmark's `main(**kwargs)` as a command: a DenseAVError (a missing extra, ...)
  is one line on stderr and exit status 2, not a traceback."""
  try:
    return main(**kwargs)
  except errors.DenseAVError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def name_list(allowed):
  """argparse type: a comma-separated list of names, each one of `allowed`."""
  def parse(s):
    out = [x.strip() for x in s.split(',') if x.strip()]
    bad = [x for x in out if x not in allowed]
    if bad:
      raise argparse.ArgumentTypeError(f'{bad} not among {tuple(allowed)}')
    return out
  return parse


def write_json(path, entries):
  """Writes `entries` (a list of measurement objects) to `path` atomically; no-op if unset.

  Called after every measurement, so an interrupted run leaves usable output."""
  if not path:
    return
  io_lib.write_json(path, entries)


def print_table(header: str, entries, format_row, out_path=None) -> None:
  """The closing table (one formatted row per entry) and where the JSON went."""
  print(header)
  for e in entries:
    print(format_row(e))
  if out_path:
    print(f'wrote {len(entries)} entries to {out_path}')
  sys.stdout.flush()


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def device_description(device) -> str:
  """'platform:kind', plus the cores and processor for a CPU device."""
  kind = getattr(device, 'device_kind', device.platform)
  desc = f'{device.platform}:{kind}'
  if device.platform == 'cpu':
    desc += f' ({cores()} cores, {platform.processor() or platform.machine()})'
  return desc
