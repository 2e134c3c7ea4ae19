"""The scalable similarity operator: the B x B score matrix without the B^2 volume.

`score_matrix(...)` returns the same [A, V] matrix as the dense reference
`dense.scores` (docs/method.md#similarity-volume), for every aggregator and head
aggregation (summary: docs/method.md#scalable-similarity-operator), but

* **blocked**: the volume S[a, v, k, h, w, f, t] is only ever materialised for one block of
  `block = (audio rows, images)` pairs at a time per device;
* **memory-light backward** (a `jax.custom_vjp`): for the max-over-space aggregators
  (`misa`, `mima`) the forward keeps only the argmax position of every (a, v, k, f, t)
  (one byte for K x H x W <= 256, else int16),
  and the backward sends each gradient to that position alone with a gather (audio side) and
  a scatter-add (image side): no second pass over the volume. `backward='remat'` (and every
  other volume aggregator: `sisa`, `paired`) recomputes each block in the backward instead
  and differentiates the dense reference on it, so nothing of size B^2 x H x W is kept;
* **sharded over the mesh's batch axes** with `jax.shard_map`: every device keeps its own
  audio rows and its own images; the images travel round the ring of devices with
  `ppermute` (`collective='ring'`) - or are all-gathered (`'allgather'`) - so each device
  computes its rows of the matrix against every image. The backward passes the images
  round the ring again and carries their gradient with them home (ring-attention style);
  the all-gather variant reduce-scatters it. The output is row-sharded over the batch axes,
  so the loss on it (row and column log-sum-exps, the calibrator's mean) is completed with
  collectives by the compiler.

Pooled aggregators (`cavmae`, `imagebind`, `simpool`) compare one vector per example; their
B x B matrix is a plain matmul and needs none of this.

Layouts are channels-last as in `similarity`: audio [A, F, T, C], mask [A, T],
image [V, H, W, C], CLS [A, C] / [V, C].
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from denseav_jax import errors
from denseav_jax.similarity import dense

# Long module: one custom_vjp operator; its forward, both backward modes and the ring /
# all-gather driver share the block layout and are read together.
ARGMAX_AGGREGATORS = ('misa', 'mima')
BACKWARDS = ('argmax', 'remat')
COLLECTIVES = ('ring', 'allgather')


# ------------------------------------------------------------------ options

class Options:
  """Static options of one operator instance (closed over by its custom_vjp)."""

  def __init__(self, *, num_heads, agg, head_agg, nonneg, use_cls, block, backward):
    self.num_heads, self.agg, self.head_agg = num_heads, agg, head_agg
    self.nonneg, self.use_cls = nonneg, use_cls
    self.block = tuple(int(b) for b in block)
    self.backward = backward if agg in ARGMAX_AGGREGATORS else 'remat'
    # Heads kept apart through the reductions: 1 when they are maxed element-wise first.
    self.out_heads = 1 if head_agg == 'max_elementwise' else num_heads


def check_options(block, backward, collective) -> None:
  """The operator's own config keys (sim.block, sim.backward, sim.collective): raises
  errors.ConfigError (a ValueError) naming the key."""
  if backward not in BACKWARDS:
    raise errors.ConfigError(f'config.sim.backward={backward!r} is not one of {BACKWARDS}')
  if collective not in COLLECTIVES:
    raise errors.ConfigError(f'config.sim.collective={collective!r} is not one of '
                             f'{COLLECTIVES}')
  if isinstance(block, str) or len(block) != 2 or min(block) < 1:
    raise errors.ConfigError(f'config.sim.block={tuple(block)!r}: give (audio rows, images), '
                             'both >= 1, e.g. (32, 8)')


def _validate(agg, head_agg, num_heads, channels, block, backward, collective):
  dense.check_options(agg, head_agg, num_heads, channels)
  if agg not in dense.VOLUME_AGGREGATORS:
    raise ValueError(f'sim.agg={agg!r}: the scalable operator handles the volume aggregators '
                     f'{dense.VOLUME_AGGREGATORS}; pooled ones are plain matmuls')
  check_options(block, backward, collective)


# ------------------------------------------------------------- one block

def _dot(a, i):
  """a [ba, F, T, c], i [bv, HW, c] -> [ba, F, T, bv, HW] in fp32."""
  prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  return jax.lax.dot_general(a, i, (((3,), (2,)), ((), ())), precision=prec,
                             preferred_element_type=jnp.float32)


def _time_weights(mask, f):
  """Masked-mean weights over (f, t): m / (F * max(sum m, 1e-3)), [A, T]."""
  m = mask.astype(jnp.float32)
  return m / (f * jnp.maximum(m.sum(-1, keepdims=True), dense.MEAN_FLOOR))


def _block_max(o: Options, a, i, cls):
  """Max over space (and over heads for 'max_elementwise') of one block.

  a [ba, F, T, K, c], i [bv, HW, K, c], cls [ba, bv, K] or None ->
  M [ba, F, T, bv, K'] (CLS added, clamped if nonneg), idx [ba, F, T, bv, K'] int32 index
  into the block's flattened (head, position) axis of one image, pos (M > 0) or None.
  """
  hw = i.shape[1]
  ms, ids = [], []
  for k in range(o.num_heads):
    s = _dot(a[:, :, :, k], i[:, :, k])  # [ba, F, T, bv, HW]
    m = s.max(-1)
    # First position attaining the max: cheaper than a variadic argmax reduce on CPU.
    idx = jnp.min(jnp.where(s == m[..., None], jnp.arange(hw, dtype=jnp.int32), hw), -1)
    if cls is not None:
      m = m + cls[:, None, None, :, k]
    ms.append(m)
    ids.append(idx + k * hw)
  m, idx = jnp.stack(ms, -1), jnp.stack(ids, -1)  # [ba, F, T, bv, K]
  if o.head_agg == 'max_elementwise' and o.num_heads > 1:
    best = jnp.argmax(m, -1)[..., None]
    m = jnp.take_along_axis(m, best, -1)
    idx = jnp.take_along_axis(idx, best, -1)
  pos = None
  if o.nonneg:
    pos = m > 0
    m = jnp.maximum(m, 0.0)
  return m, idx, pos


def _reduce_time(o: Options, m, w, mask):
  """M [ba, F, T, bv, K'] -> scores [ba, bv, K'] and, for mima, the argmax step [ba, bv, K']."""
  if o.agg == 'misa':
    return jnp.einsum('aftvk,at->avk', m, w, precision=jax.lax.Precision.HIGHEST), None
  x = m.mean(1)  # mima: [ba, T, bv, K']
  x = x - (1.0 - mask.astype(jnp.float32))[:, :, None, None] * dense.MASK_FILL
  return x.max(1), jnp.argmax(x, 1)


def _dense_block(o: Options, a, mask, i, acls, icls):
  """The dense reference on one block (remat path): a [ba,F,T,C], i [bv,HW,C] -> [ba,bv,K']."""
  h = i.shape[1]
  return dense.scores(
      a, mask, i.reshape(i.shape[0], h, 1, i.shape[-1]), num_heads=o.num_heads, agg=o.agg,
      head_agg=o.head_agg, nonneg=o.nonneg, use_cls=o.use_cls, audio_cls=acls,
      image_cls=icls, per_head=True)


# ------------------------------------------------- one tile (local rows x one image shard)

def _chunks(x, n):
  """[N, ...] -> [N // n, n, ...]."""
  return x.reshape(x.shape[0] // n, n, *x.shape[1:])


def _cls_block(o, acls, icls):
  if not o.use_cls:
    return None
  return dense.cls_sims(acls, icls, o.num_heads)  # [ba, bv, K]


def _tile_fwd(o: Options, a, mask, i, acls, icls):
  """a [Ba, F, T, C], mask [Ba, T], i [Bv, HW, C] (both padded to whole blocks) ->
  (scores [Ba, Bv, K'], residuals). Loops over blocks; one block of the volume live.

  The argmax residuals are written straight into their final layout ([Ba, F, T, Bv, K']
  indices, [Ba, Bv, K'] mima steps), so no transposed copy of them is ever made.
  """
  ba, bv = o.block
  k = o.num_heads
  n_v = i.shape[0]
  f, t = a.shape[1], a.shape[2]
  w = _time_weights(mask, f)
  a_c, m_c, w_c, acls_c = _chunks(a, ba), _chunks(mask, ba), _chunks(w, ba), _chunks(acls, ba)
  i_c, icls_c = _chunks(i, bv), _chunks(icls, bv)
  kk = o.out_heads

  def row(xa):
    a_b, m_b, w_b, acls_b = xa
    a_h = dense.split_heads(a_b, k)

    if o.backward == 'remat':
      def col_remat(xi):
        i_b, icls_b = xi
        return _dense_block(o, a_b, m_b, i_b, acls_b, icls_b)
      return jax.lax.map(col_remat, (i_c, icls_c)), ()  # [nv, ba, bv, K']

    def col(bufs, xi):
      j, i_b, icls_b = xi
      m, idx, pos = _block_max(o, a_h, dense.split_heads(i_b, k),
                               _cls_block(o, acls_b, icls_b))
      s, tstar = _reduce_time(o, m, w_b, m_b)
      new = [idx.astype(_index_dtype(i.shape[1], k))]
      new += [pos] if pos is not None else []
      new += [tstar.astype(jnp.int32)] if tstar is not None else []
      bufs = tuple(jax.lax.dynamic_update_slice_in_dim(b, x, j * bv, axis=x.ndim - 2)
                   for b, x in zip(bufs, new))
      return bufs, s

    bufs = [jnp.zeros((ba, f, t, n_v, kk), _index_dtype(i.shape[1], k))]
    bufs += [jnp.zeros((ba, f, t, n_v, kk), bool)] if o.nonneg else []
    bufs += [jnp.zeros((ba, n_v, kk), jnp.int32)] if o.agg == 'mima' else []
    bufs, s = jax.lax.scan(col, tuple(bufs), (jnp.arange(i_c.shape[0]), i_c, icls_c))
    return s, bufs

  s, res = jax.lax.map(row, (a_c, m_c, w_c, acls_c))  # s [na, nv, ba, bv, K']
  s = s.transpose(0, 2, 1, 3, 4).reshape(a.shape[0], n_v, o.out_heads)
  res = tuple(x.reshape(a.shape[0], *x.shape[2:]) for x in res)  # [na, ba, ...] -> [Ba, ...]
  return s, res


def _index_dtype(hw, k):
  """The narrowest integer type for an index into K heads x HW positions (K=1, 14x14: 1 byte)."""
  n = hw * k
  return jnp.uint8 if n <= 2 ** 8 else jnp.int16 if n <= 2 ** 15 else jnp.int32


def _tile_bwd(o: Options, a, mask, i, acls, icls, res, g):
  """Gradients of sum(g * tile scores) w.r.t. a, i, acls, icls; g [Ba, Bv, K']."""
  if o.backward == 'argmax':
    return _argmax_tile_bwd(o, a, mask, i, acls, icls, res, g)
  del res  # The remat path keeps nothing: each block is recomputed here.
  ba, bv = o.block
  na, nv = a.shape[0] // ba, i.shape[0] // bv
  a_c, m_c, acls_c = _chunks(a, ba), _chunks(mask, ba), _chunks(acls, ba)
  i_c, icls_c = _chunks(i, bv), _chunks(icls, bv)
  g_c = g.reshape(na, ba, nv, bv, -1).transpose(0, 2, 1, 3, 4)  # [na, nv, ba, bv, K']
  di0 = (jnp.zeros(i_c.shape, jnp.float32), jnp.zeros(icls_c.shape, jnp.float32))

  def row(di_acc, xa):
    a_b, m_b, acls_b, g_r = xa
    da0 = (jnp.zeros(a_b.shape, jnp.float32), jnp.zeros(acls_b.shape, jnp.float32))

    def col(da_acc, xi):
      j, g_b = xi
      i_b, icls_b = i_c[j], icls_c[j]
      # Rematerialise the block and differentiate the dense reference on it.
      _, vjp = jax.vjp(lambda a_, i_, ac_, ic_: _dense_block(o, a_, m_b, i_, ac_, ic_),
                       a_b, i_b, acls_b, icls_b)
      da, di, dac, dic = vjp(g_b)
      da_acc = (da_acc[0] + da, da_acc[1] + dac)
      return da_acc, (di, dic)

    da, (di, dic) = jax.lax.scan(col, da0, (jnp.arange(nv), g_r))
    di_acc = (di_acc[0] + di, di_acc[1] + dic)
    return di_acc, da

  (di, dicls), (da, dacls) = jax.lax.scan(row, di0, (a_c, m_c, acls_c, g_c))
  return (da.reshape(a.shape), di.reshape(i.shape), dacls.reshape(acls.shape),
          dicls.reshape(icls.shape))


# Chunking of the argmax backward (independent of the forward's blocks): the gather pass
# walks GATHER_ROWS audio rows x GATHER_COLS images at a time, the scatter pass
# SCATTER_ROWS audio rows into the gradient of SCATTER_COLS images (kept in cache).
GATHER_ROWS, GATHER_COLS = 1, 128
SCATTER_ROWS, SCATTER_COLS = 8, 4


def _split(x, n, axis):
  """Splits `axis` (padded with zeros to a multiple of n) into [N // n, ..., n, ...],
  moving the chunk index to the front."""
  pad = (-x.shape[axis]) % n
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    x = jnp.pad(x, widths)
  shape = x.shape[:axis] + (x.shape[axis] // n, n) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _argmax_tile_bwd(o: Options, a, mask, i, acls, icls, res, g):
  """Backward of a tile from its argmax indices: each gradient goes to its max position.

  Two passes over the (small) index array: the audio gradient gathers the image vectors at
  the max positions; the image gradient scatter-adds the audio vectors there. Cost
  O(B^2 F T C), a factor H W below the forward; nothing of size B^2 H W is built.
  """
  k = o.num_heads
  n_a, f, t, c_all = a.shape
  n_v, hw = i.shape[:2]
  c = c_all // k
  idx = res[0]  # [Ba, F, T, Bv, K'] uint8 / int16
  rest = list(res[1:])
  pos = rest.pop(0) if o.nonneg else None
  tstar = rest.pop(0) if o.agg == 'mima' else None
  w = _time_weights(mask, f)
  hp = jax.lax.Precision.HIGHEST

  def coefficients(idx_c, g_c, w_c, pos_c, tstar_c):
    """d loss / d M of a chunk: [ra, F, T, rv, K'] (and the head each one belongs to)."""
    if o.agg == 'misa':
      q = w_c[:, None, :, None, None]
    else:
      q = (jnp.arange(t)[None, :, None, None] == tstar_c[:, None]).astype(jnp.float32)
      q = q[:, None] / f
    coef = q * g_c[:, None, None]
    if pos_c is not None:
      coef = coef * pos_c
    return jnp.broadcast_to(coef, idx_c.shape), idx_c.astype(jnp.int32) // hw

  opt = lambda x, n, axis: None if x is None else _split(x, n, axis)

  # ---- audio side: gather. Rows in chunks of GATHER_ROWS; images in chunks of GATHER_COLS.
  gv = min(GATHER_COLS, n_v)
  table = dense.split_heads(i, k).transpose(0, 2, 1, 3).astype(jnp.float32)
  tables = _split(table.reshape(n_v, k * hw, c), gv, 0)  # [nv, gv, K*HW, c]
  ra = GATHER_ROWS

  def audio_rows(x):
    idx_r, g_r, w_r, pos_r, tstar_r = x  # rows chunk; images still whole

    def per_cols(acc, y):
      tab, idx_c, g_c, pos_c, tstar_c = y
      coef, head = coefficients(idx_c, g_c, w_r, pos_c, tstar_c)
      flat = jnp.arange(tab.shape[0])[:, None] * (k * hw) + idx_c.astype(jnp.int32)
      rows = tab.reshape(-1, c).at[flat].get(mode='promise_in_bounds')  # [ra,F,T,gv,K',c]
      if k == 1:
        d = jnp.einsum('aftvj,aftvjc->aftc', coef, rows, precision=hp)[:, :, :, None]
      else:
        hot = coef[..., None] * jax.nn.one_hot(head, k, dtype=jnp.float32)
        d = jnp.einsum('aftvjk,aftvjc->aftkc', hot, rows, precision=hp)
      dcls = None
      if o.use_cls:
        dcls = jnp.einsum('aftvj,aftvjk->avk', coef, jax.nn.one_hot(head, k, dtype=jnp.float32))
      return acc + d, dcls

    cols = (tables, _split(idx_r, gv, 3), _split(g_r, gv, 1), opt(pos_r, gv, 3),
            opt(tstar_r, gv, 1))
    da, dcls = jax.lax.scan(per_cols, jnp.zeros((idx_r.shape[0], f, t, k, c), jnp.float32),
                            cols)
    if dcls is not None:  # [nv, ra, gv, K] -> [ra, Bv, K]
      dcls = jnp.moveaxis(dcls, 0, 1).reshape(idx_r.shape[0], -1, k)[:, :n_v]
    return da, dcls

  rows_in = (_split(idx, ra, 0), _split(g, ra, 0), _split(w, ra, 0), opt(pos, ra, 0),
             opt(tstar, ra, 0))
  da, dcls = jax.lax.map(audio_rows, rows_in)
  da = da.reshape(-1, f, t, k * c)[:n_a]

  # ---- image side: scatter-add into the gradient of SCATTER_COLS images at a time (a
  # divisor of Bv, so each chunk is a slice of the index array, not a copy of all of it).
  sa = SCATTER_ROWS
  sv = max(d for d in range(1, min(SCATTER_COLS, n_v) + 1) if n_v % d == 0)
  a_h = _split(dense.split_heads(a, k).astype(jnp.float32), sa, 0)  # [na, sa, F, T, K, c]

  def image_cols(j):
    cols = lambda x, axis: None if x is None else jax.lax.dynamic_slice_in_dim(
        x, j * sv, sv, axis=axis)
    idx_v, g_v, pos_v, tstar_v = cols(idx, 3), cols(g, 1), cols(pos, 3), cols(tstar, 1)

    def per_rows(acc, y):
      a_r, w_r, idx_c, g_c, pos_c, tstar_c = y
      coef, head = coefficients(idx_c, g_c, w_r, pos_c, tstar_c)
      if k == 1:
        src = a_r[:, :, :, None]  # [sa, F, T, 1, 1, c]
      else:
        src = jnp.einsum('aftvjk,aftkc->aftvjc', jax.nn.one_hot(head, k, dtype=jnp.float32),
                         a_r, precision=hp)
      upd = (coef[..., None] * src).reshape(-1, c)
      flat = jnp.arange(sv)[:, None] * (k * hw) + idx_c.astype(jnp.int32)
      return acc.at[flat.reshape(-1)].add(upd, mode='promise_in_bounds'), None

    rows = (a_h, _split(w, sa, 0), _split(idx_v, sa, 0), _split(g_v, sa, 0),
            opt(pos_v, sa, 0), opt(tstar_v, sa, 0))
    acc, _ = jax.lax.scan(per_rows, jnp.zeros((sv * k * hw, c), jnp.float32), rows)
    return acc.reshape(sv, k, hw, c).transpose(0, 2, 1, 3).reshape(sv, hw, k * c)

  di = jax.lax.map(image_cols, jnp.arange(n_v // sv)).reshape(n_v, hw, k * c)

  dac = jnp.zeros(acls.shape, jnp.float32)
  dic = jnp.zeros(icls.shape, jnp.float32)
  if o.use_cls:
    dcls = dcls.reshape(-1, n_v, k)[:n_a]  # [Ba, Bv, K]
    ac, ic = dense.split_heads(acls, k), dense.split_heads(icls, k)
    dac = jnp.einsum('avk,vkc->akc', dcls, ic.astype(jnp.float32), precision=hp)
    dic = jnp.einsum('avk,akc->vkc', dcls, ac.astype(jnp.float32), precision=hp)
    dac, dic = dac.reshape(acls.shape), dic.reshape(icls.shape)
  return da, di, dac, dic


# ------------------------------------------------ the ring (inside shard_map)

def _ring_op(o: Options, axes, n_dev, collective):
  """Builds f(a, mask, i, acls, icls) -> local rows [Ba, n_dev * Bv, K'] with a custom VJP."""

  def fwd_impl(a, mask, i, acls, icls):
    if collective == 'allgather' or n_dev == 1:
      if n_dev > 1:
        i = jax.lax.all_gather(i, axes, tiled=True)
        icls = jax.lax.all_gather(icls, axes, tiled=True)
      s, res = _tile_fwd(o, a, mask, i, acls, icls)
      return s, res
    me = jax.lax.axis_index(axes)
    perm = [(d, (d + 1) % n_dev) for d in range(n_dev)]

    def step(carry, _):
      i_cur, icls_cur = carry
      s, res = _tile_fwd(o, a, mask, i_cur, acls, icls_cur)
      carry = (jax.lax.ppermute(i_cur, axes, perm), jax.lax.ppermute(icls_cur, axes, perm))
      return carry, (s, res)

    _, (s, res) = jax.lax.scan(step, (i, icls), None, length=n_dev)
    # Ring step r held the images of device (me - r) mod n: put tiles in column order.
    order = (me - jnp.arange(n_dev)) % n_dev  # column block j came at step order[j]
    s = s[order]  # [n, Ba, Bv, K']
    s = s.transpose(1, 0, 2, 3).reshape(a.shape[0], -1, o.out_heads)
    return s, res

  @jax.custom_vjp
  def op(a, mask, i, acls, icls):
    return fwd_impl(a, mask, i, acls, icls)[0]

  def fwd(a, mask, i, acls, icls):
    s, res = fwd_impl(a, mask, i, acls, icls)
    return s, (a, mask, i, acls, icls, res)

  def bwd(saved, g):
    a, mask, i, acls, icls, res = saved
    cast = lambda x, like: x.astype(like.dtype)
    if collective == 'allgather' or n_dev == 1:
      if n_dev > 1:
        i = jax.lax.all_gather(i, axes, tiled=True)
        icls = jax.lax.all_gather(icls, axes, tiled=True)
      da, di, dac, dic = _tile_bwd(o, a, mask, i, acls, icls, res, g)
      if n_dev > 1:  # each device's image gradient is summed over every device's rows.
        di = jax.lax.psum_scatter(di, axes, scatter_dimension=0, tiled=True)
        dic = jax.lax.psum_scatter(dic, axes, scatter_dimension=0, tiled=True)
    else:
      me = jax.lax.axis_index(axes)
      perm = [(d, (d + 1) % n_dev) for d in range(n_dev)]
      bv = i.shape[0]
      g_blocks = g.reshape(a.shape[0], n_dev, bv, -1).transpose(1, 0, 2, 3)
      order = (me - jnp.arange(n_dev)) % n_dev  # step r holds column block order[r]
      g_steps = g_blocks[order]

      def step(carry, x):
        i_cur, icls_cur, di_cur, dic_cur, da, dac = carry
        g_r, res_r = x
        d_a, d_i, d_ac, d_ic = _tile_bwd(o, a, mask, i_cur, acls, icls_cur, res_r, g_r)
        # The image gradient travels with its images and is home after n_dev hops.
        carry = (jax.lax.ppermute(i_cur, axes, perm), jax.lax.ppermute(icls_cur, axes, perm),
                 jax.lax.ppermute(di_cur + d_i, axes, perm),
                 jax.lax.ppermute(dic_cur + d_ic, axes, perm), da + d_a, dac + d_ac)
        return carry, None

      zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
      carry = (i, icls, zeros(i), zeros(icls), zeros(a), zeros(acls))
      carry, _ = jax.lax.scan(step, carry, (g_steps, res))
      _, _, di, dic, da, dac = carry
    return (cast(da, a), None, cast(di, i), cast(dac, acls), cast(dic, icls))

  op.defvjp(fwd, bwd)
  return op


# ------------------------------------------------------------------ public

def _pad_rows(x, n):
  pad = (-x.shape[0]) % n
  return x if not pad else jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))


def batch_axes_size(mesh, batch_axes: Sequence[str]) -> int:
  return int(np.prod([mesh.shape[ax] for ax in batch_axes]))


def score_matrix(audio_feats, audio_mask, image_feats, audio_cls=None, image_cls=None, *,
                 mesh, batch_axes: Sequence[str] = ('data',), num_heads: int = 1,
                 agg: str = 'misa', head_agg: str = 'max_elementwise', nonneg: bool = False,
                 use_cls: bool = False, mask_silence: bool = True,
                 block: Sequence[int] = (32, 8), backward: str = 'argmax',
                 collective: str = 'ring', per_head: bool = False):
  """[A, V] scores of every audio with every image, row-sharded over `batch_axes`.

  Equal to `dense.scores(...)` with the same options (values and gradients w.r.t.
  both feature maps and both CLS vectors). A and V must be divisible by the number of
  devices along `batch_axes`; any block size works (blocks are padded).
  """
  batch_axes = tuple(batch_axes)
  dense.check_options(agg, head_agg, num_heads, audio_feats.shape[-1])
  if agg in dense.POOLED_AGGREGATORS:
    s = dense.pooled_scores(audio_feats, image_feats, audio_cls, image_cls, agg)
    s = jax.lax.with_sharding_constraint(s, jax.sharding.NamedSharding(mesh, P(batch_axes)))
    return s[..., None] if per_head else s
  _validate(agg, head_agg, num_heads, audio_feats.shape[-1], block, backward, collective)
  if use_cls and (audio_cls is None or image_cls is None):
    raise ValueError('sim.use_cls=True needs audio_cls and image_cls')
  n_dev = batch_axes_size(mesh, batch_axes)
  n_a, n_v = audio_feats.shape[0], image_feats.shape[0]
  for what, n in (('audio rows', n_a), ('images', n_v)):
    if n % n_dev:
      raise ValueError(f'{n} {what} cannot be split over the {n_dev} devices of mesh axes '
                       f'{batch_axes}; pad the batch to a multiple of {n_dev}')
  # Blocks never exceed the local rows / images (no padding a small shard up to a block).
  block = (min(block[0], n_a // n_dev), min(block[1], n_v // n_dev))
  o = Options(num_heads=num_heads, agg=agg, head_agg=head_agg, nonneg=nonneg,
              use_cls=use_cls, block=block, backward=backward)
  c = audio_feats.shape[-1]
  if not use_cls:  # Stand-ins so every path has the same arguments (never read).
    audio_cls = jnp.zeros((n_a, c), audio_feats.dtype)
    image_cls = jnp.zeros((n_v, c), image_feats.dtype)
  mask = audio_mask if mask_silence else jnp.ones_like(audio_mask)
  mask = mask.astype(jnp.float32)
  h, w = image_feats.shape[1:3]
  images = image_feats.reshape(n_v, h * w, c)
  op = _ring_op(o, batch_axes, n_dev, collective)
  ba, bv = o.block

  def local(a, m, i, ac, ic):
    la, lv = a.shape[0], i.shape[0]
    # Pad the local rows to whole blocks; padded rows have zero features and mask.
    s = op(_pad_rows(a, ba), _pad_rows(m, ba), _pad_rows(i, bv), _pad_rows(ac, ba),
           _pad_rows(ic, bv))
    s = s.reshape(s.shape[0], n_dev, -1, s.shape[-1])[:la, :, :lv]
    return s.reshape(la, n_dev * lv, s.shape[-1])

  spec = P(batch_axes)
  out = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec,
                      check_vma=False)(audio_feats, mask, images, audio_cls, image_cls)
  return out if per_head else dense.combine_heads(out, head_agg)

