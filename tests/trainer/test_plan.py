"""Ahead-of-time plans with the TPU compiler (trainer/plan.py, python -m denseav_jax.compile):
the runlocal config's real train step compiled for small TPU slices on this CPU machine.

Needs libtpu (the test extra brings jax[tpu]); skipped without it. Each compile of the
runlocal step takes 10-20 s on the 2-core machine (the TPU compiler, not the tracing): the
module makes six."""

import json

import pytest

from conftest import ROOT, load_config
from denseav_jax.parallel import topologies
from denseav_jax.trainer import max_batch
from denseav_jax.trainer import plan as plan_lib

pytestmark = pytest.mark.skipif(
    not topologies.libtpu_available(),
    reason='libtpu is not installed (pip install -e ".[tpu]" or ".[test]" brings jax[tpu]): '
           'no TPU compiler to plan with')

CONFIG = ('denseav_language.py', 'runlocal')
QUIET = lambda *_: None


LEVERS = {'model.tower_microbatches': 2, 'opt_state_sharding': 'batch',
          'model.audio.remat': 'full', 'model.image.remat': 'full',
          'model.aligner_remat': 'full'}


def _plan(batch, topology='v5e:2x2', num_slices=1, phase='2', **changes):
  config = plan_lib.with_batch(load_config(*CONFIG), batch)
  for key, value in changes.items():
    *path, leaf = key.split('.')
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  return plan_lib.plan(config, topology, num_slices, phase, log=QUIET)


@pytest.fixture(scope='module')
def both():
  """Both phases of runlocal at global batch 8 on a v5e 2x2 slice."""
  return _plan(8, phase='all')


@pytest.fixture(scope='module')
def levers64():
  """Phase 2 at global batch 64 on two slices of v5e 2x2 (8 chips, the data axis across
  the slices) with every memory lever on."""
  return _plan(64, num_slices=2, **LEVERS)


def test_runlocal_on_v5e_2x2(both):
  assert both['chips'] == 4 and both['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 1}
  one, p = both['phases']
  assert (one['phase'], p['phase']) == (1, 2)
  assert one['opt_state_bytes'] < p['opt_state_bytes']  # Phase 1: frozen towers.
  assert 0 < p['total_bytes'] < p['hbm_bytes'] == 16 * 2**30
  assert p['argument_bytes'] >= p['params_bytes'] + p['opt_state_bytes'] + p['batch_bytes']
  assert p['flops'] > 0 and p['bytes_accessed'] > 0 and p['roofline_s'] > 0
  assert p['flops_per_example'] == pytest.approx(p['flops'] * 4 / 8)
  text = plan_lib.format_plan(both)
  assert 'FLOPs per step' in text and 'of 16.00 GiB HBM' in text


def test_flops_and_memory_grow_with_the_batch_and_levers_compile(both, levers64):
  """Batch 8 on one v5e 2x2 slice -> 64 on two (per chip 2 -> 8 examples), with the memory
  levers on: towers over chunks, remat everywhere, Adam state over the batch axes, all
  through the TPU compiler. At this toy size the levers save nothing but Adam state (their
  effect on the full-size model: docs/pods.md)."""
  assert levers64['num_slices'] == 2 and levers64['chips'] == 8
  assert levers64['mesh'] == {'data': 8, 'fsdp': 1, 'tensor': 1}
  small, large = both['phases'][1], levers64['phases'][0]
  # Per chip 4x the examples: XLA's count grows about that much (the similarity's score
  # quadratic, but it counts the towers' loop over chunks once).
  assert large['flops'] > 3 * small['flops']
  assert large['batch_bytes'] == 4 * small['batch_bytes']
  assert large['params_bytes'] == small['params_bytes']
  assert large['opt_state_bytes'] * 8 == pytest.approx(small['opt_state_bytes'], rel=0.05)
  assert large['temp_bytes'] > small['temp_bytes']


def test_oversized_batch_is_one_line():
  with pytest.raises(plan_lib.DoesNotFit) as e:
    _plan(65536)
  message = str(e.value)
  assert '\n' not in message
  assert 'does not fit: needs at least' in message and 'the v5e chip has' in message
  assert 'fsdp' in message and 'remat=full' in message and 'find_max_batch' in message
  assert 'tower_microbatches' in message and 'opt_state_sharding=batch' in message
  assert e.value.needs > e.value.has


def test_find_max_batch_bisects(monkeypatch):
  """The bisection itself, on a stand-in for the compile: fits up to 22 examples per chip."""
  calls = []

  def fake_plan_phase(config, model, mesh, topo, phase, mfu, budget=None):
    del budget
    calls.append(config.batch_size)
    if config.batch_size > 22 * 4:
      raise plan_lib.DoesNotFit('no', needs=2.0, has=1.0)
    return plan_lib.PhasePlan(phase, config.batch_size, 4, topo.chip.hbm_bytes, 1, 1, 1, 1,
                              0, 0, 1, 1, 1e9, 1e9, 0.1, 1e14, 1e12, 10, 0.4)

  monkeypatch.setattr(plan_lib, 'plan_phase', fake_plan_phase)
  result = max_batch.find_max_batch(load_config(*CONFIG), 'v5e:2x2', phase='2', log=QUIET)
  (p,) = result['phases']
  assert (p['max_batch_size'], p['next_batch_size']) == (88, 92)
  assert p['plan']['batch_size'] == 88 and p['compiles'] == len(set(calls)) <= 12
  calls.clear()  # From a batch thought to fit: no compiles below it.
  result = max_batch.find_max_batch(load_config(*CONFIG), 'v5e:2x2', phase='2', log=QUIET,
                                   start_batch=64)
  assert result['phases'][0]['max_batch_size'] == 88 and min(calls) == 64


def test_find_max_batch_steps_in_tower_chunks(monkeypatch):
  """With the towers over chunks the search keeps the chunk (here 2 examples per device:
  batch 16 on 4 devices over 2 chunks) and tries whole chunks per device, the number of
  chunks following the batch; a stand-in compile fits up to 10 per device."""
  seen = []

  def fake_plan_phase(config, model, mesh, topo, phase, mfu, budget=None):
    del budget
    per_device = config.batch_size // 4
    seen.append((per_device, config.model.tower_microbatches))
    if per_device > 11:
      raise plan_lib.DoesNotFit('no', needs=2.0, has=1.0)
    return plan_lib.PhasePlan(phase, config.batch_size, 4, topo.chip.hbm_bytes, 1, 1, 1, 1,
                              0, 0, 1, 1, 1e9, 1e9, 0.1, 1e14, 1e12, 10, 0.4)

  monkeypatch.setattr(plan_lib, 'plan_phase', fake_plan_phase)
  config = plan_lib.with_batch(load_config(*CONFIG), 16)
  config.model.tower_microbatches = 2
  result = max_batch.find_max_batch(config, 'v5e:2x2', phase='2', log=QUIET)
  (p,) = result['phases']
  assert result['tower_chunk'] == 2
  assert (p['max_batch_size'], p['next_batch_size']) == (40, 48)  # 5 and 6 chunks.
  assert all(per_device == 2 * n for per_device, n in seen), seen
  config.model.tower_microbatches = 3  # 4 per device is not 3 chunks: one line.
  with pytest.raises(plan_lib.errors.UserError, match='tower_microbatches=3'):
    max_batch.find_max_batch(config, 'v5e:2x2', phase='2', log=QUIET)


def test_find_max_batch_within_a_budget(both, monkeypatch):
  """Real compiles: planned within 1 KiB less than batch 8 needs (--hbm_gib), the search
  from batch 4 finds 4 and that 8 does not fit, needing exactly what batch 8 needed. Batch
  4 is compiled here; batch 8's compile is the `both` fixture's (the same config, slice and
  phase), its figures checked against the budget as plan_phase checks a fresh compile's."""
  needs_8 = both['phases'][1]['total_bytes']
  budget = (needs_8 - 1024) / 2**30
  compiled_8 = plan_lib.PhasePlan.from_dict(both['phases'][1])
  compile_and_check = plan_lib.plan_phase

  def plan_phase(config, model, mesh, topo, phase, mfu, budget=None):
    if config.batch_size == compiled_8.batch_size and phase == compiled_8.phase:
      return plan_lib.check_fits(compiled_8, config, mesh, topo, budget)
    return compile_and_check(config, model, mesh, topo, phase, mfu, budget)

  monkeypatch.setattr(plan_lib, 'plan_phase', plan_phase)
  result = max_batch.find_max_batch(load_config(*CONFIG), 'v5e:2x2', phase='2', log=QUIET,
                                   start_batch=4, hbm_gib=budget)
  (p,) = result['phases']
  assert (p['max_batch_size'], p['next_batch_size'], p['compiles']) == (4, 8, 2)
  assert p['next_needs_bytes'] == needs_8
  assert p['plan']['total_bytes'] <= budget * 2**30 < needs_8
  assert 'planned within' in plan_lib.format_plan(result)
  assert 'the plan allows' in p['next_error'] and '(--hbm_gib)' in p['next_error']
  with pytest.raises(plan_lib.errors.UserError, match='--hbm_gib=17'):
    plan_lib.budget_bytes(topologies.parse('v5e-4'), 17)


def test_command_writes_the_plan(tmp_path, capsys):
  """The command for two v4 slices (v4-8: 2x2x1 chips, megacore, each), with the
  evaluation steps, writes its JSON. Its main runs in this process, with the flags parsed
  as `python -m denseav_jax.compile` parses them (its start as a process: test_cli.py's
  --help test)."""
  from denseav_jax import compile as compile_cmd  # pylint: disable=g-import-not-at-top
  from denseav_jax.bench import common  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'plan.json'
  common.run_with_flags(compile_cmd, [
      '--config', f'{ROOT}/configs/{CONFIG[0]}:{CONFIG[1]}', '--topology', 'v4-8',
      '--num_slices', '2', '--phase', '2', '--batch_size', '16', '--evals', '--hbm_gib', '31',
      '--out', str(out)])
  stdout = capsys.readouterr().out
  plan = json.loads(out.read_text())
  assert plan['chip'] == 'v4' and plan['chips'] == 8 and plan['num_slices'] == 2
  assert plan['mesh']['data'] == 8
  assert plan['phases'][0]['batch_size'] == 16 and plan['phases'][0]['hbm_bytes'] == 32 * 2**30
  assert 'per chip' in stdout and 'planned within 31.00 GiB per chip (--hbm_gib)' in stdout
  assert plan['budget_bytes'] == 31 * 2**30
  # --evals: the evaluation towers and each retrieval evaluator's score matrix.
  steps = {e['step']: e for e in plan['evals']}
  assert 'towers' in steps and any(k.endswith(' scores') for k in steps), sorted(steps)
  assert all(e['fits'] and e['flops'] > 0 for e in plan['evals'])
