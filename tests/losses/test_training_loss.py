"""The training loss through the scalable operator equals the dense reference, every term
is logged, and every synthetic config variant builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from denseav_jax.losses import regularisers
from denseav_jax.parallel import sharding
from denseav_jax.data import pipeline
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.trainer import optim
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

VARIANTS = ('', 'runlocal', 'plain', 'speech', 'sound', 'twohead', 'disentangle',
            'manyvoices', 'dense')


@pytest.mark.parametrize('variant', VARIANTS)
def test_every_variant_builds(variant):
  c = load_config('synthetic.py', variant)
  denseav.build_model(c)
  optim.make_optimizer(c)


def test_quick_start_default_has_the_regularisers():
  """The quick-start default is the study's best point: DenseAV's regularisers and their
  transforms on, two heads; `plain` is the model before the study (one head, no
  regularisers); `disentangle` adds the disentanglement loss."""
  c = load_config('synthetic.py', '')
  w = c.loss.weights
  assert (w.tv, w.silence_l1, w.nonneg_pressure) == (0.01, 0.01, 0.01)
  assert (w.cal_balance, w.neg_audio, w.mixup) == (0.1, 0.01, 0.1)
  assert c.data.neg_audio and c.data.quad_mixup == 0.1 and c.model.num_heads == 2
  plain = load_config('synthetic.py', 'plain')  # The first-run model before the study.
  assert plain.loss.weights.tv == 0.0 and not plain.data.neg_audio
  assert plain.model.num_heads == 1
  dis = load_config('synthetic.py', 'disentangle')
  assert dis.model.num_heads == 2 and dis.loss.weights.disentangle > 0
  assert 'disentangle' in dis.evals


def test_unknown_variant_lists_the_choices():
  with pytest.raises(ValueError, match="'disentangle'"):
    load_config('synthetic.py', 'nope')


def _loss_and_grads(config, batch, params, model, mesh):
  fn = jax.jit(jax.value_and_grad(
      lambda p: step_lib.loss_fn(p, batch, jax.random.key(3), model, config, mesh), has_aux=True))
  (loss, metrics), grads = fn(params)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


# misa with two heads (disentangle on) and mima with one; every aggregator against the dense
# reference, paired included: tests/similarity/test_scalable.py.
@pytest.mark.parametrize('agg,heads', [('misa', 2)])  # Every aggregator: test_scalable.py.
def test_scalable_training_loss_equals_dense(agg, heads):
  """Global batch 16 over 8 devices, release regulariser weights on, real model outputs."""
  c = load_config('synthetic.py', 'runlocal')
  c.model.num_heads = heads
  c.sim.agg = agg
  c.sim.use_cls = True
  c.loss.weights.update(tv=0.01, silence_l1=0.01, silence_l2=0.01, nonneg_pressure=0.01,
                        cal_balance=0.1, specialization=0.05,
                        disentangle=0.1 if heads == 2 else 0.0)
  c.loss.num_samples = 8
  c.sim.block = (1, 1)  # 2 rows per device: blocks of one pair, ring of 8.
  mesh = sharding.make_mesh(c.mesh)
  model = denseav.build_model(c)
  tx = optim.make_optimizer(c)
  state, _ = state_lib.create_state(c, model, tx, mesh)
  batch = sharding.put_batch(next(pipeline.train_iterator(c)), mesh)
  got = _loss_and_grads(c, batch, state.params, model, mesh)
  c.sim.impl = 'dense'
  want = _loss_and_grads(c, batch, state.params, model, mesh)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for k, v in want[1].items():
    np.testing.assert_allclose(got[1][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  flat_got = jax.tree_util.tree_leaves_with_path(got[2])
  # Relative per tensor, with an absolute floor for tensors whose gradient is zero in exact
  # arithmetic (e.g. attention key biases: softmax ignores a constant shift).
  for (path, g), w in zip(flat_got, jax.tree.leaves(want[2])):
    scale = float(np.abs(w).max())
    assert float(np.abs(g - w).max()) <= 1e-4 * scale + 1e-8, jax.tree_util.keystr(path)
  # Every computable term is logged separately.
  expected = {'loss_nce', 'loss_tv', 'loss_silence_l1', 'loss_silence_l2',
              'loss_nonneg_pressure', 'loss_cal_balance'}
  if heads == 2:
    expected |= {'loss_specialization', 'loss_disentangle'}
  assert expected <= set(got[1]), sorted(got[1])
  # One naming: each logged regulariser loss_NAME has its weight in loss.weights.NAME.
  logged = {k[len('loss_'):] for k in got[1] if k.startswith('loss_')} - {c.loss.type}
  assert logged <= set(c.loss.weights) == set(regularisers.REGULARISERS), sorted(logged)
  assert all(np.isfinite(v) for v in got[1].values())


def test_weighted_term_without_its_input_is_a_clear_error():
  c = load_config('synthetic.py', 'runlocal')
  c.loss.weights.mixup = 0.1
  mesh = sharding.make_mesh(c.mesh)
  model = denseav.build_model(c)
  # The error comes while tracing: shapes suffice (no init, no compilation).
  params = jax.eval_shape(lambda k: params_lib.init_params(c, model, k), jax.random.key(0))
  batch = sharding.put_batch(next(pipeline.train_iterator(c)), mesh)
  with pytest.raises(ValueError, match=r'loss\.weights\.mixup'):
    jax.eval_shape(lambda p: step_lib.loss_fn(p, batch, jax.random.key(0), model, c, mesh),
                   params)


def test_mask_to_grid_average_pools_the_pixel_mask():
  m = np.zeros((1, 8, 8), np.float32)
  m[0, :4, :4] = 1  # the true image in the top-left quadrant of a quad-mixup grid
  m[0, 4, 4] = 1
  got = np.asarray(step_lib.mask_to_grid(jnp.asarray(m), (2, 2)))
  np.testing.assert_allclose(got[0], [[1.0, 0.0], [0.0, 1 / 16]])
  with pytest.raises(ValueError, match='feature grid'):
    step_lib.mask_to_grid(jnp.asarray(m), (3, 3))
