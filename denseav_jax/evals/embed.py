"""The shared embedding path of evaluation and `predict` (docs/evaluation.md#sharding).

`towers` runs both towers on a batch (float32 out). `tower_fn(model)` is its jit on one
device (predict). `SetRunner.run` embeds a whole evaluation set on the mesh:

- positions are cut into global batches of `global_batch(batch_size)` rows (a multiple of
  the data-parallel size); row r of batch b is position b * B + r, and each process reads
  only the positions of the rows its devices hold, so no host reads (or holds) the set;
- the last batch is padded (status 0) and an unreadable example becomes a row with status
  -1; both are dropped from every result;
- the evaluator's `reduce(emb, batch)` turns the batch's dense features into small
  per-example results on the devices (heat maps, scores), which come back to every host,
  in position order, with the per-row inputs it asked for; with keep=True the dense
  features also stay on the devices, sharded over the batch, for an N x N score matrix.

Every per-example result depends only on that example, so the numbers do not depend on
the batch size, the mesh or the number of processes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax.parallel import partitioning
from denseav_jax.models import denseav

log = logging.getLogger(__name__)

MODEL_INPUTS = ('image', 'audio', 'audio_len')
FEATURES = ('image', 'image_cls', 'audio', 'audio_cls', 'mask')


def towers(model, params, image, audio, audio_len) -> dict[str, jax.Array]:
  """Both towers on a batch: image [B, H, W, C], image_cls [B, C], audio [B, F, T, C],
  audio_cls [B, C] (float32) and mask [B, T] (the audio mask the scores use)."""
  v = {'params': params}
  img, img_cls = model.apply(v, image, method=model.embed_image)
  aud, aud_cls, mask = model.apply(v, audio, audio_len, method=model.embed_audio)
  f32 = lambda x: x.astype(jnp.float32)
  return dict(image=f32(img), image_cls=f32(img_cls), audio=f32(aud), audio_cls=f32(aud_cls),
              mask=mask)


def vectors(model, params, emb) -> tuple[jax.Array, jax.Array]:
  """(audio, image) vectors the pooled scores compare: SimPool's for sim_agg='simpool'
  (its value shift uses the min over everything it is given), else the CLS vectors."""
  if model.sim_agg == 'simpool':
    v = {'params': params}
    return (model.apply(v, emb['audio'], method=model.pool),
            model.apply(v, emb['image'], method=model.pool))
  return emb['audio_cls'], emb['image_cls']


def tower_fn(model):
  """jit of `towers` (+ `vectors` as audio_vec / image_vec) on the default device, cached
  per architecture."""
  return _tower_fn(denseav.Arch(model))


@functools.cache
def _tower_fn(arch: denseav.Arch):
  model = arch.model

  def fn(params, image, audio, audio_len):
    emb = towers(model, params, image, audio, audio_len)
    emb['audio_vec'], emb['image_vec'] = vectors(model, params, emb)
    return emb
  return jax.jit(fn)


@dataclasses.dataclass
class SetResult:
  """What `SetRunner.run` gives back for one set of N positions (M = padded rows)."""
  outputs: dict[str, np.ndarray]  # reduce's results and the gathered inputs, [N, ...].
  status: np.ndarray  # [N] int8: 1 usable, -1 unreadable (left out).
  features: dict[str, jax.Array] | None  # keep=True: FEATURES, [M, ...] on the devices.
  rows: int  # M

  @property
  def valid(self) -> np.ndarray:
    return self.status == 1


class Abandoned(Exception):
  """An evaluation given up between two batches because the run is stopping
  (SetRunner.stop_check said so, on every host at the same batch)."""


def first_replica(x: jax.Array) -> np.ndarray:
  """A replicated global array's value, read on any process (its local copy)."""
  return np.asarray(x.addressable_data(0))


class SetRunner:
  """Embeds evaluation sets on a mesh (see the module docstring)."""

  def __init__(self, config, model, mesh, param_shardings=None):
    self.config, self.model, self.mesh = config, model, mesh
    self.repl = sharding.replicated(mesh)
    self.data = sharding.batch_sharding(mesh)
    self.param_shardings = self.repl if param_shardings is None else param_shardings
    self.rules = partitioning.rules_from_config(config.partitioning)
    s, length = int(config.input.image_size), int(config.input.audio_samples)
    self.input_spec = {'image': ((s, s, 3), np.uint8), 'audio': ((length,), np.float32),
                       'audio_len': ((), np.int32)}
    self.threads = max(1, int(config.data.num_threads))
    self.max_bad_fraction = float(config.data.max_bad_fraction)
    self._fns: dict = {}
    self._steps: int | None = None
    # Asked before every batch while set (Suite.run(stop=...)): True gives the set up
    # (Abandoned). Every host asks at the same batch, so it may be a collective.
    self.stop_check: Callable[[], bool] | None = None

  # ------------------------------------------------------------------ layout
  def global_batch(self, batch_size: int) -> int:
    dp = sharding.data_parallel_size(self.mesh)
    return max(1, -(-int(batch_size) // dp)) * dp

  def host_rows(self, global_batch: int) -> np.ndarray:
    """The rows of a global batch this process's devices hold (sorted, each once)."""
    rows = set()
    for idx in self.data.addressable_devices_indices_map((global_batch,)).values():
      rows.update(range(*idx[0].indices(global_batch)))
    return np.array(sorted(rows), np.int64)

  def num_audio_steps(self, params) -> int:
    """T, the audio features' time steps for one clip."""
    if self._steps is None:
      spec = self.input_spec
      shapes = jax.eval_shape(
          lambda p: towers(self.model, p, jnp.zeros((1,) + spec['image'][0], jnp.uint8),
                           jnp.zeros((1,) + spec['audio'][0], jnp.float32),
                           jnp.ones((1,), jnp.int32)), params)
      self._steps = int(shapes['audio'].shape[2])
    return self._steps

  # -------------------------------------------------------------------- run
  def _fn(self, reduce, gather: tuple[str, ...], keep: bool):
    key = (reduce, gather, keep)
    if key not in self._fns:
      model, mesh, rules = self.model, self.mesh, self.rules

      def step(params, batch):
        with partitioning.activation_sharding(mesh, rules):
          emb = towers(model, params, batch['image'], batch['audio'], batch['audio_len'])
        small = dict(reduce(emb, batch)) if reduce is not None else {}
        small.update({k: batch[k] for k in gather})
        return (small, {k: emb[k] for k in FEATURES}) if keep else (small,)

      out = (self.repl, self.data) if keep else (self.repl,)
      self._fns[key] = jax.jit(step, in_shardings=(self.param_shardings, self.data),
                               out_shardings=out)
    return self._fns[key]

  def embed_step(self):
    """jit(params, batch) -> ({}, features): both towers on a global batch, the features
    left sharded (also compiled ahead of time by `compile --evals`)."""
    return self._fn(None, (), True)

  def _put(self, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_callback(v.shape, self.data, lambda idx, v=v: v[idx])
            for k, v in host.items()}

  def run(self, params, eval_set, *, batch_size: int,
          reduce: Callable[[dict, dict], dict] | None = None,
          prepare: Callable[[dict], dict] | None = None,
          extra_spec: dict[str, tuple[tuple, Any]] | None = None,
          gather: tuple[str, ...] = (), keep: bool = False) -> SetResult:
    """Embeds `eval_set` (see the module docstring).

    prepare(example) -> per-row inputs named in extra_spec ({name: (shape, dtype)}) made on
    the host from a read example (e.g. a bit-packed ground-truth mask); `gather` names the
    per-row inputs to return with reduce's results (always with 'status').
    """
    n = len(eval_set)
    gb = self.global_batch(batch_size)
    rows = self.host_rows(gb)
    spec = dict(self.input_spec)
    spec.update(extra_spec or {})
    spec['status'] = ((), np.int8)
    fn = self._fn(reduce, tuple(gather) + ('status',), keep)
    num_batches = -(-n // gb)

    def read(position):
      if position >= n:
        return None, 0
      ex = eval_set.read(position)
      if ex is None:
        return None, -1
      if prepare is not None:
        ex = {**ex, **prepare(ex)}
      return ex, 1

    def host_batch(b, pool):
      arrays = {k: np.zeros((gb,) + tuple(shape), dtype) for k, (shape, dtype) in spec.items()}
      arrays['audio_len'][:] = 1
      for r, (ex, status) in zip(rows, pool.map(read, (b * gb + int(r) for r in rows))):
        arrays['status'][r] = status
        if ex is not None:
          for k in spec:
            if k != 'status':
              arrays[k][r] = ex[k]
      return arrays

    small, feats = [], []
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool, \
        concurrent.futures.ThreadPoolExecutor(1) as ahead:
      pending = ahead.submit(host_batch, 0, pool) if num_batches else None
      for b in range(num_batches):
        if self.stop_check is not None and self.stop_check():
          pending.cancel()
          raise Abandoned(f'{eval_set.dataset}: stopped before batch {b + 1} of {num_batches}')
        arrays = pending.result()
        if b + 1 < num_batches:  # Read the next batch while this one runs.
          pending = ahead.submit(host_batch, b + 1, pool)
        out = fn(params, self._put(arrays))
        small.append({k: first_replica(v) for k, v in out[0].items()})
        if keep:
          feats.append(out[1])
    outputs = {k: np.concatenate([s[k] for s in small])[:n] for k in small[0]}
    status = outputs.pop('status').astype(np.int8)
    bad = int((status == -1).sum())
    if bad == n or bad > self.max_bad_fraction * n:
      raise errors.DataError(
          f'evaluation set {eval_set.dataset}: {bad} of {n} examples are unusable '
          f'(data.max_bad_fraction={self.max_bad_fraction}); the warnings name the files')
    features = None
    if keep:
      if 'concat' not in self._fns:
        self._fns['concat'] = jax.jit(
            lambda parts: {k: jnp.concatenate([p[k] for p in parts]) for k in FEATURES},
            out_shardings=self.data)
      features = self._fns['concat'](feats)
      del feats
    return SetResult(outputs=outputs, status=status, features=features,
                     rows=num_batches * gb)

  def features_at(self, params, eval_set, positions) -> dict[str, np.ndarray]:
    """The dense features (FEATURES) of a few positions of a set, on every host (figures)."""
    sub = _Subset(eval_set, positions)
    res = self.run(params, sub, batch_size=len(sub), keep=True)
    if 'gather' not in self._fns:
      self._fns['gather'] = jax.jit(lambda f: f, out_shardings=self.repl)
    feats = self._fns['gather'](res.features)
    return {k: first_replica(v)[:len(sub)] for k, v in feats.items()}


class _Subset:
  """Some positions of an evaluation set, as a set of their own."""

  def __init__(self, eval_set, positions):
    self.base, self.positions = eval_set, [int(p) for p in positions]
    self.dataset = eval_set.dataset

  def __len__(self) -> int:
    return len(self.positions)

  def read(self, position: int):
    return self.base.read(self.positions[position])
