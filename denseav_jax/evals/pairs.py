"""Caption/image pair sets, embedded once per evaluation and shared by the retrieval and
disentanglement evaluators: the dense features stay on the devices (sharded over the
batch) and each pair's matched score per head comes back to the hosts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.similarity import dense


def score_key(config) -> tuple:
  """The config values matched_head_scores depends on: (num_heads, agg, nonneg, use_cls,
  mask_silence)."""
  sim = config.sim
  return (int(config.model.num_heads), str(sim.agg), bool(sim.nonneg), bool(sim.use_cls),
          bool(sim.mask_silence))


def matched_head_scores(emb, key: tuple) -> jax.Array:
  """[B, K] each head's score of each matched pair: the aggregator's reduction of the
  pair's masked volume with the heads kept apart (the release's disentangle_validation:
  get_pairwise_sims with agg_heads=False); key: score_key(config)."""
  k, agg, nonneg, use_cls, mask_silence = key
  if agg in dense.POOLED_AGGREGATORS:  # One 'head': the pooled vectors' product.
    a = emb['audio_cls'] / jnp.maximum(jnp.linalg.norm(emb['audio_cls'], axis=-1,
                                                       keepdims=True), 1e-12)
    v = emb['image_cls'] / jnp.maximum(jnp.linalg.norm(emb['image_cls'], axis=-1,
                                                       keepdims=True), 1e-12)
    return (a * v).sum(-1, keepdims=True)
  # The release's volume for these scores (get_pairwise_sims): the feature product times
  # the audio mask, then the CLS term, then the clamp; the time reduction's mask is the
  # audio mask only with sim.mask_silence (else every step counts, padding as zeros).
  vol = dense.matched_volume(emb['audio'], emb['image'], k, nonneg, audio_mask=emb['mask'],
                             audio_cls=emb['audio_cls'] if use_cls else None,
                             image_cls=emb['image_cls'] if use_cls else None)
  mask = emb['mask'] if mask_silence else jnp.ones_like(emb['mask'])
  return dense.reduce_volume(vol, mask, agg)  # [B, K]


class PairSet:
  """A pair set's SetResult, cached in the suite run's cache under its key."""

  @staticmethod
  def get(evaluator, params, cache, dataset: str, num_examples: int):
    ev = evaluator.ctx.eval_set(dataset, num_examples, pairs=True)
    key = ('pairs',) + ev.key
    if key not in cache:
      config = evaluator.config
      cache[key] = (ev, evaluator.ctx.runner.run(
          params, ev, batch_size=evaluator.cfg.batch_size, keep=True,
          reduce=_reduce_for(score_key(config))))
    return cache[key]


@functools.cache
def _reduce_for(key: tuple):
  """One reduce function per scoring setup (score_key), so the runner's jit cache hits."""
  return lambda emb, batch: {'head_scores': matched_head_scores(emb, key)}


def valid_device_mask(result) -> np.ndarray:
  """[M] bool over the padded rows: True where the row is a usable example."""
  valid = np.zeros(result.rows, bool)
  valid[:len(result.status)] = result.status == 1
  return valid
