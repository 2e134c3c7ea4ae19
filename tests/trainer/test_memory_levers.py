"""The memory levers (docs/pods.md#memory-levers) change where memory goes, not the numbers:
towers over sequential chunks of the batch, rematerialised towers and aligners, Adam state split over the batch axes. Each against the plain
config on 8 devices: the loss, every logged term and every gradient, and one update."""

import jax
import numpy as np
import pytest

from conftest import load_config
from denseav_jax import errors
from denseav_jax.data import pipeline
from denseav_jax.models import denseav
from denseav_jax.parallel import microbatch
from denseav_jax.parallel import partitioning
from denseav_jax.parallel import sharding
from denseav_jax.trainer import checks
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

RTOL, ATOL = 2e-5, 1e-6


def _config(**changes):
  """synthetic:runlocal (no randomness in its forward pass), 2 examples per device. (The
  conv front end's remat: tests/models/test_towers.py.)"""
  c = load_config()
  c.batch_size = 16
  for key, value in changes.items():
    node, *path = key.split('.')
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = value
  return c


@pytest.fixture(scope='module')
def batch():
  c = _config()
  it = pipeline.train_iterator(c)
  b = next(it)
  it.close()
  return b


def _loss_and_grads(c, batch):
  mesh = checks.check_training(c)
  model = denseav.build_model(c)
  state, shardings = state_lib.create_state(c, model, optim.make_optimizer(c), mesh)
  rules = partitioning.rules_from_config(c.partitioning)
  data = sharding.put_batch(batch, mesh)

  @jax.jit
  def run(params):
    with partitioning.activation_sharding(mesh, rules):
      return jax.value_and_grad(step_lib.loss_fn, has_aux=True)(
          params, data, jax.random.key(3), model, c, mesh)

  (_, metrics), grads = run(state.params)
  return jax.device_get(metrics), jax.device_get(grads), state, shardings, mesh, model, data


def _assert_same(got, want):
  m1, g1 = got[:2]
  m0, g0 = want[:2]
  assert sorted(m1) == sorted(m0)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=RTOL, atol=ATOL, err_msg=k)
  flat0 = dict(jax.tree_util.tree_leaves_with_path(g0))
  flat1 = dict(jax.tree_util.tree_leaves_with_path(g1))
  assert flat0.keys() == flat1.keys()
  nonzero, worst = 0, 0.0
  total = float(np.sqrt(sum(np.sum(np.square(g)) for g in flat0.values())))
  for path, g in flat0.items():
    # Per parameter, relative to its gradient's norm: a weight's gradient sums over the
    # batch, and chunks (or recomputation) add in another order, so a single element that
    # cancels to near zero differs by float32 rounding of the large terms, not of itself.
    norm = float(np.linalg.norm(g))
    nonzero += norm > 0
    # (Analytically zero gradients, e.g. an attention key's bias: against the whole norm.)
    err = float(np.linalg.norm(np.asarray(flat1[path]) - g)) / max(norm, 1e-4 * total)
    assert err <= RTOL, (jax.tree_util.keystr(path), err)
    worst = max(worst, err)
  assert nonzero > len(flat0) // 2  # Gradients really reach both towers.


@pytest.fixture(scope='module')
def plain(batch):
  return _loss_and_grads(_config(), batch)


def test_towers_over_chunks_of_the_batch(plain, batch):
  _assert_same(_loss_and_grads(_config(**{'model.tower_microbatches': 2}), batch), plain)


def test_rematerialised_towers_and_aligners(plain, batch):
  c = _config(**{'model.image.remat': 'full', 'model.audio.remat': 'dots',
                 'model.aligner_remat': 'full'})
  _assert_same(_loss_and_grads(c, batch), plain)


def test_adam_state_over_the_batch_axes():
  """Moments split over data x fsdp (1/8 of each per device here, beside the fsdp axis the
  parameters use): the same two updates from the same gradients as moments sharded like
  their parameters. (The whole step with it: the TPU plans, tests/trainer/test_plan.py.)"""
  mesh_spec = (('data', 4), ('fsdp', 2))
  updates = {}
  for how in ('params', 'batch'):
    c = _config(opt_state_sharding=how, mesh=mesh_spec)
    mesh = checks.check_training(c)
    model = denseav.build_model(c)
    tx = optim.make_optimizer(c)
    state, shardings = state_lib.create_state(c, model, tx, mesh)
    if how == 'batch':
      split = [s for s in jax.tree.leaves(shardings.opt_state)
               if 'data' in str(s.spec) and 'fsdp' in str(s.spec)]
      assert len(split) > len(jax.tree.leaves(shardings.params))  # mu and nu, most of them.
      big = [x for x in jax.tree.leaves(state.opt_state) if x.ndim and x.size >= 1024]
      assert big and all(x.addressable_shards[0].data.size * 8 == x.size for x in big)
    grads = jax.tree.map(lambda p: jax.numpy.cos(p * 3.0 + 1.0), state.params)
    update = jax.jit(tx.update, out_shardings=(shardings.params, shardings.opt_state))
    u1, opt = update(grads, state.opt_state, state.params)
    grads = jax.tree.map(lambda g: -0.5 * g, grads)  # The second reads the first's moments.
    u2, _ = update(grads, opt, state.params)
    updates[how] = jax.device_get((u1, u2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               updates['batch'], updates['params'])


def test_frozen_weights_in_bf16(batch):
  """frozen_dtype='bfloat16' (with bf16 compute): phase 1 holds the towers' frozen
  matrices in bf16 and gives the same loss, terms and gradients; at the switch to phase 2
  they come back in float32, equal to the weights of a run without the lever."""
  got, want = {}, {}
  for frozen, out in (('bfloat16', got), ('float32', want)):
    c = _config(**{'model.dtype': 'bfloat16', 'frozen_dtype': frozen})
    mesh = checks.check_training(c)
    model = denseav.build_model(c)
    state, _ = state_lib.create_state(c, model, optim.make_optimizer(c, 1), mesh, phase=1)
    rules = partitioning.rules_from_config(c.partitioning)
    data = sharding.put_batch(batch, mesh)

    @jax.jit
    def run(params, c=c, model=model, mesh=mesh, rules=rules, data=data):
      with partitioning.activation_sharding(mesh, rules):
        return jax.value_and_grad(step_lib.loss_fn, has_aux=True)(
            params, data, jax.random.key(3), model, c, mesh, 1)

    (_, metrics), grads = run(state.params)
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state.params['audio_model'])}
    out.update(metrics=jax.device_get(metrics), grads=jax.device_get(grads), dtypes=dtypes)
    thawed, _ = state_lib.with_optimizer(state, c, model, optim.make_optimizer(c, 2), mesh, 2)
    out['phase2'] = jax.device_get(thawed.params)
  assert 'bfloat16' in got['dtypes'] and want['dtypes'] == {'float32'}
  for k in want['metrics']:
    np.testing.assert_array_equal(got['metrics'][k], want['metrics'][k], err_msg=k)
  trained = {k: v for k, v in want['grads'].items() if k not in optim.TOWERS}
  for k in trained:  # The heads' gradients (the towers are frozen in phase 1).
    jax.tree.map(np.testing.assert_array_equal, got['grads'][k], want['grads'][k])
  jax.tree.map(lambda a, b: (np.testing.assert_array_equal(a, b), a.dtype == b.dtype),
               got['phase2'], want['phase2'])
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(got['phase2']['audio_model']))


def test_lever_values_are_checked():
  c = _config(**{'model.tower_microbatches': 3})
  with pytest.raises(errors.ConfigError, match='tower_microbatches=3'):
    checks.check_training(c)
  for key, value in (('model.tower_microbatches', 0), ('model.aligner_remat', 'some'),
                     ('opt_state_sharding', 'zero'), ('frozen_dtype', 'float16')):
    with pytest.raises(errors.ConfigError, match=key.split('.')[-1]):
      checks.check_training(_config(**{key: value}))
  with pytest.raises(errors.ConfigError, match="needs config.model.dtype='bfloat16'"):
    checks.check_training(_config(frozen_dtype='bfloat16'))  # float32 compute.


def test_over_batch_axes_adds_the_unused_axes_where_they_divide():
  mesh = sharding.make_mesh((('data', 4), ('fsdp', 2)))
  P = jax.sharding.PartitionSpec
  named = lambda *spec: jax.sharding.NamedSharding(mesh, P(*spec))
  assert sharding.over_batch_axes(named(), (6, 16)).spec == P(None, ('data', 'fsdp'))
  assert sharding.over_batch_axes(named(None, 'fsdp'), (8, 6)).spec == P('data', 'fsdp')
  assert sharding.over_batch_axes(named(), (3, 5)).spec == P()  # Nothing divides: as is.
  assert microbatch.map_chunks(lambda i, x: x * 2, 1, None, (np.ones(3),)).sum() == 6
