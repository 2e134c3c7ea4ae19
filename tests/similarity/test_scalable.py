"""The scalable, mesh-sharded similarity operator equals the dense reference.

Runs on the 8 fake CPU devices (conftest): the global batch is split over the `data` axis,
images travel round the ring (or are all-gathered), blocks are padded. For each option set
the NCE loss on the B x B matrix and its gradients w.r.t. both feature maps, the calibrator
and both CLS vectors must match `dense.scores` within 1e-5 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from denseav_jax.losses import contrastive
from denseav_jax.similarity import scalable
from denseav_jax.similarity import dense

B, F, T, H, W, C = 24, 2, 7, 3, 4, 8  # 3 rows per device: blocks of 2 need padding.
RTOL = 1e-5


@pytest.fixture(scope='module')
def mesh():
  return jax.make_mesh((8,), ('data',), axis_types=(AxisType.Auto,))


@pytest.fixture(scope='module')
def inputs(mesh):
  r = np.random.RandomState(0)
  audio = r.randn(B, F, T, C).astype(np.float32)
  # Uneven valid lengths, some rows mostly padding, two silent clips (only the one true
  # step the mask guarantees), one full row.
  lens = r.randint(1, T + 1, B)
  lens[:2] = 1
  lens[2] = T
  mask = np.arange(T)[None] < lens[:, None]
  audio[:2] *= 1e-3  # near-silent clips
  audio = audio * mask[:, None, :, None] + (~mask)[:, None, :, None] * r.randn(
      B, F, T, C).astype(np.float32) * 0.1  # padding frames still carry (small) features
  image = r.randn(B, H, W, C).astype(np.float32)
  a_cls = r.randn(B, C).astype(np.float32)
  i_cls = r.randn(B, C).astype(np.float32)
  shard = NamedSharding(mesh, P('data'))
  put = lambda x: jax.device_put(jnp.asarray(x), shard)
  return put(audio), put(mask), put(image), put(a_cls), put(i_cls)


def _loss(score_fn):
  def f(audio, image, a_cls, i_cls, cal):
    s = score_fn(audio, image, a_cls, i_cls)
    return contrastive.contrastive_loss(s, cal, 'nce'), s
  return f


def _compare(mesh, inputs, **kw):
  audio, mask, image, a_cls, i_cls = inputs
  ref_kw = {k: v for k, v in kw.items() if k not in ('block', 'backward', 'collective')}

  def want_fn(a, i, ac, ic):
    return dense.scores(a, mask, i, audio_cls=ac, image_cls=ic, **ref_kw)

  def got_fn(a, i, ac, ic):
    return scalable.score_matrix(a, mask, i, ac, ic, mesh=mesh, **kw)

  cal = jnp.float32(1.7)
  grad = lambda fn: jax.jit(jax.value_and_grad(_loss(fn), argnums=(0, 1, 2, 3, 4),
                                               has_aux=True))
  (want_v, want_s), want_g = grad(want_fn)(audio, image, a_cls, i_cls, cal)
  (got_v, got_s), got_g = grad(got_fn)(audio, image, a_cls, i_cls, cal)
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=RTOL)
  names = ('audio_feats', 'image_feats', 'audio_cls', 'image_cls', 'cal')
  for name, g, w in zip(names, got_g, want_g):
    g, w = np.asarray(g), np.asarray(w)
    scale = max(np.abs(w).max(), 1e-30)
    err = np.abs(g - w).max() / scale
    assert err <= RTOL, f'd loss / d {name}: max error {err:.2e} of max |grad| {scale:.2e}'
  # The matrix itself.
  np.testing.assert_allclose(np.asarray(got_s), np.asarray(want_s), rtol=RTOL,
                             atol=RTOL * float(jnp.abs(want_s).max()))
  return float(want_v)


@pytest.mark.parametrize('k', [1, 2])
@pytest.mark.parametrize('head_agg', dense.HEAD_AGGREGATIONS)
@pytest.mark.parametrize('agg', dense.VOLUME_AGGREGATORS)
def test_matches_dense_every_aggregator(mesh, inputs, agg, head_agg, k):
  _compare(mesh, inputs, agg=agg, head_agg=head_agg, num_heads=k, block=(2, 2))


@pytest.mark.parametrize('agg', scalable.ARGMAX_AGGREGATORS)
@pytest.mark.parametrize('k,head_agg', [(1, 'max_elementwise'), (2, 'max_elementwise'),
                                        (2, 'sum')])
def test_matches_dense_cls_and_nonneg(mesh, inputs, agg, k, head_agg):
  _compare(mesh, inputs, agg=agg, head_agg=head_agg, num_heads=k, use_cls=True, nonneg=True,
           block=(2, 3))


@pytest.mark.parametrize('agg', ['misa', 'paired'])
def test_matches_dense_cls_remat_paths(mesh, inputs, agg):
  _compare(mesh, inputs, agg=agg, num_heads=2, use_cls=True, nonneg=False, block=(3, 2))


@pytest.mark.parametrize('backward,collective', [('remat', 'ring'), ('argmax', 'allgather'),
                                                 ('remat', 'allgather')])
def test_matches_dense_other_backward_and_collective(mesh, inputs, backward, collective):
  _compare(mesh, inputs, agg='misa', num_heads=2, head_agg='max_elementwise',
           backward=backward, collective=collective, block=(2, 2))


def test_mask_silence_off_and_whole_tile_blocks(mesh, inputs):
  _compare(mesh, inputs, agg='misa', mask_silence=False, block=(3, 3))
  _compare(mesh, inputs, agg='mima', mask_silence=False, block=(1, 1))


@pytest.mark.parametrize('agg', dense.POOLED_AGGREGATORS)
def test_pooled_aggregators(mesh, inputs, agg):
  _compare(mesh, inputs, agg=agg)


def test_single_device_mesh_equals_dense(inputs):
  one = jax.make_mesh((1,), ('data',), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  audio, mask, image, a_cls, i_cls = (jnp.asarray(np.asarray(x)) for x in inputs)
  got = scalable.score_matrix(audio, mask, image, mesh=one, block=(5, 7))
  want = dense.scores(audio, mask, image)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=1e-5)


def test_two_axis_mesh_uses_all_batch_axes():
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(AxisType.Auto,) * 2)
  r = np.random.RandomState(1)
  audio = jnp.asarray(r.randn(16, 1, 5, 4), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < r.randint(1, 6, 16)[:, None])
  image = jnp.asarray(r.randn(16, 2, 2, 4), jnp.float32)
  got = scalable.score_matrix(audio, mask, image, mesh=mesh, batch_axes=('data', 'fsdp'),
                                 block=(3, 1))
  np.testing.assert_allclose(np.asarray(got), np.asarray(dense.scores(audio, mask, image)),
                             rtol=RTOL, atol=1e-5)


def test_errors_name_the_option(mesh, inputs):
  audio, mask, image, _, _ = inputs
  with pytest.raises(ValueError, match='sim.backward'):
    scalable.score_matrix(audio, mask, image, mesh=mesh, backward='nope')
  with pytest.raises(ValueError, match='sim.collective'):
    scalable.score_matrix(audio, mask, image, mesh=mesh, collective='nope')
  with pytest.raises(ValueError, match='sim.block'):
    scalable.score_matrix(audio, mask, image, mesh=mesh, block=(0, 2))
  with pytest.raises(ValueError, match='devices'):
    scalable.score_matrix(audio[:12], mask[:12], image[:12], mesh=mesh)
  with pytest.raises(ValueError, match='sim.use_cls'):
    scalable.score_matrix(audio, mask, image, mesh=mesh, use_cls=True)


def test_argmax_backward_keeps_no_volume(mesh):
  """The backward's saved state is O(B^2 T) one-byte indices, not the O(B^2 H W T) volume."""
  b, hw, t, c = 64, 14 * 14, 56, 32
  r = np.random.RandomState(2)
  audio = jnp.asarray(r.randn(b, 1, t, c), jnp.float32)
  mask = jnp.ones((b, t), bool)
  image = jnp.asarray(r.randn(b, 14, 14, c), jnp.float32)

  def loss(a, i, impl):
    if impl == 'dense':
      s = dense.scores(a, mask, i)
    else:
      s = scalable.score_matrix(a, mask, i, mesh=mesh, block=(2, 4))
    return contrastive.contrastive_loss(s, 1.0)

  def temp_bytes(impl):
    f = jax.jit(jax.grad(lambda a, i: loss(a, i, impl), argnums=(0, 1)))
    return f.lower(audio, image).compile().memory_analysis().temp_size_in_bytes

  volume_bytes = b * b * hw * t * 4
  assert temp_bytes('dense') > volume_bytes  # the reference holds the whole volume
  assert temp_bytes('scalable') < volume_bytes / 8


def test_output_is_row_sharded(mesh, inputs):
  audio, mask, image, _, _ = inputs
  s = jax.jit(lambda a, m, i: scalable.score_matrix(a, m, i, mesh=mesh))(audio, mask, image)
  assert s.shape == (B, B)
  assert s.sharding.shard_shape(s.shape) == (B // 8, B)


def test_evaluation_retrieval_over_1024_pairs_is_sharded(monkeypatch):
  """The retrieval evaluator's N x N scores run through the sharded operator (8 devices)."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from denseav_jax.parallel import sharding
  from denseav_jax.evals import suite as suite_lib
  from denseav_jax.models import denseav
  c = load_config('synthetic.py', 'runlocal')
  c.model.num_heads = 2
  mesh = sharding.make_mesh(c.mesh)
  suite = suite_lib.Suite(c, denseav.build_model(c), mesh, names=['retrieval'])
  ev = suite.evaluators[0]
  n, t, g, ch = 1024, 6, 3, c.model.code_dim
  r = np.random.RandomState(3)
  aud = r.randn(n, 1, t, ch).astype(np.float32)
  img = r.randn(n, g, g, ch).astype(np.float32)
  mask = np.arange(t)[None] < r.randint(1, t + 1, n)[:, None]
  vec = np.zeros((n, ch), np.float32)
  shard = sharding.batch_sharding(mesh)
  put = lambda x: jax.make_array_from_callback(x.shape, shard, lambda idx: x[idx])
  feats = dict(audio=put(aud), mask=put(mask), image=put(img), audio_cls=put(vec),
               image_cls=put(vec))
  calls = []
  real = scalable.score_matrix
  monkeypatch.setattr(scalable, 'score_matrix',
                      lambda *a, **k: calls.append(k['batch_axes']) or real(*a, **k))
  got = ev.score_fn()(None, feats, np.ones(n, bool))
  assert calls == [('data', 'fsdp')]  # Through the sharded operator, over the batch axes.
  assert got.shape == (n, n)
  want = dense.blocked_scores(jnp.asarray(aud), jnp.asarray(mask), jnp.asarray(img),
                              block=64, num_heads=2, head_agg='sum')
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
