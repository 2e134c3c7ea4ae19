"""Test setup: 8 fake CPU devices, set before jax is imported, so sharded paths run."""

import importlib.util
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def load_config(name: str = 'synthetic.py', arg: str | None = 'runlocal'):
  """Loads configs/NAME's get_config(arg), as the CLI's --config flag would."""
  path = os.path.join(ROOT, 'configs', name)
  spec = importlib.util.spec_from_file_location(f'_cfg_{name[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def tiny_config():
  return load_config()
