"""Ahead-of-time plans with the TPU compiler (trainer/plan.py, python -m denseav_jax.compile):
the runlocal config's real train step compiled for small TPU slices on this CPU machine.

Needs libtpu (the test extra brings jax[tpu]); skipped without it. Each compile of the
runlocal step takes 12-20 s on the 2-core machine (the TPU compiler, not the tracing), so
the fast tests make two compiles and the rest are marked slow."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, load_config, subprocess_env
from denseav_jax.parallel import topologies
from denseav_jax.trainer import plan as plan_lib

pytestmark = pytest.mark.skipif(
    not topologies.libtpu_available(),
    reason='libtpu is not installed (pip install -e ".[tpu]" or ".[test]" brings jax[tpu]): '
           'no TPU compiler to plan with')

CONFIG = ('denseav_language.py', 'runlocal')
QUIET = lambda *_: None


def _plan(batch, topology='v5e:2x2', num_slices=1, phase='2'):
  config = plan_lib.with_batch(load_config(*CONFIG), batch)
  return plan_lib.plan(config, topology, num_slices, phase, log=QUIET)


class _Plans(dict):
  def __missing__(self, batch):
    self[batch] = _plan(batch)
    return self[batch]


@pytest.fixture(scope='module')
def plans():
  """Phase 2 of runlocal on a v5e 2x2 slice by global batch, compiled once per module."""
  return _Plans()


def test_runlocal_on_v5e_2x2(plans):
  result = plans[8]
  assert result['chips'] == 4 and result['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 1}
  (p,) = result['phases']
  assert p['phase'] == 2 and 0 < p['total_bytes'] < p['hbm_bytes'] == 16 * 2**30
  assert p['argument_bytes'] >= p['params_bytes'] + p['opt_state_bytes'] + p['batch_bytes']
  assert p['flops'] > 0 and p['bytes_accessed'] > 0 and p['roofline_s'] > 0
  assert p['flops_per_example'] == pytest.approx(p['flops'] * 4 / 8)
  text = plan_lib.format_plan(result)
  assert 'FLOPs per step' in text and 'of 16.00 GiB HBM' in text


@pytest.mark.slow
def test_flops_and_memory_grow_with_the_batch(plans):
  small, large = (plans[b]['phases'][0] for b in (8, 32))
  assert large['flops'] > 3 * small['flops']  # Linear in the towers, quadratic in the score.
  assert large['batch_bytes'] == 4 * small['batch_bytes']
  assert large['params_bytes'] == small['params_bytes']
  assert large['argument_bytes'] > small['argument_bytes']


def test_oversized_batch_is_one_line():
  with pytest.raises(plan_lib.DoesNotFit) as e:
    _plan(65536)
  message = str(e.value)
  assert '\n' not in message
  assert 'does not fit: needs at least' in message and 'the v5e chip has' in message
  assert 'fsdp' in message and 'remat=full' in message and 'find_max_batch' in message
  assert e.value.needs > e.value.has


def test_find_max_batch_bisects(monkeypatch):
  """The bisection itself, on a stand-in for the compile: fits up to 22 examples per chip."""
  calls = []

  def fake_plan_phase(config, model, mesh, topo, phase, mfu):
    calls.append(config.batch_size)
    if config.batch_size > 22 * 4:
      raise plan_lib.DoesNotFit('no', needs=2.0, has=1.0)
    return plan_lib.PhasePlan(phase, config.batch_size, 4, topo.chip.hbm_bytes, 1, 1, 1, 1,
                              0, 0, 1, 1, 1e9, 1e9, 0.1, 1e14, 1e12, 10, 0.4)

  monkeypatch.setattr(plan_lib, 'plan_phase', fake_plan_phase)
  result = plan_lib.find_max_batch(load_config(*CONFIG), 'v5e:2x2', phase='2', log=QUIET)
  (p,) = result['phases']
  assert (p['max_batch_size'], p['next_batch_size']) == (88, 92)
  assert p['plan']['batch_size'] == 88 and p['compiles'] == len(set(calls)) <= 12
  calls.clear()  # From a batch thought to fit: no compiles below it.
  result = plan_lib.find_max_batch(load_config(*CONFIG), 'v5e:2x2', phase='2', log=QUIET,
                                   start_batch=64)
  assert result['phases'][0]['max_batch_size'] == 88 and min(calls) == 64


@pytest.mark.slow
def test_both_phases_v4_and_two_slices():
  both = _plan(8, phase='all')
  one, two = both['phases']
  assert (one['phase'], two['phase']) == (1, 2)
  assert one['opt_state_bytes'] < two['opt_state_bytes']  # Phase 1: frozen towers.
  v4 = _plan(8, topology='v4:2x2x1')
  assert v4['chip'] == 'v4' and v4['phases'][0]['hbm_bytes'] == 32 * 2**30
  two_slices = _plan(16, num_slices=2)
  assert two_slices['chips'] == 8 and two_slices['mesh']['data'] == 8


@pytest.mark.slow
@pytest.mark.subprocess
def test_command_writes_the_plan_and_fails_in_one_line(tmp_path):
  out = tmp_path / 'plan.json'
  base = [sys.executable, '-m', 'denseav_jax.compile', '--config',
          f'configs/{CONFIG[0]}:{CONFIG[1]}', '--topology', 'v5e-4', '--phase', '2']
  env = subprocess_env(devices=None, cache=False)
  done = subprocess.run(base + ['--batch_size', '8', '--out', str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(out.read_text())['phases'][0]['batch_size'] == 8
  done = subprocess.run(base + ['--batch_size', '65536'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2
  errors_ = [l for l in done.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors_) == 1 and 'does not fit' in errors_[0]
