"""Test setup: 8 fake CPU devices, set before jax is imported, so sharded paths run."""

import os
import sys

os.environ['XLA_FLAGS'] = ' '.join(filter(None, (  # Appended: XLA_FLAGS=--xla_cpu_max_isa=AVX2.
    os.environ.get('XLA_FLAGS'), '--xla_force_host_platform_device_count=8')))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def load_config(name: str = 'synthetic.py', arg: str | None = 'runlocal'):
  """configs/NAME's get_config(arg), through the project's one config loader."""
  from denseav_jax import configs  # pylint: disable=g-import-not-at-top
  return configs.load(f'configs/{name}' + (f':{arg}' if arg else ''))


@pytest.fixture
def tiny_config():
  return load_config()
