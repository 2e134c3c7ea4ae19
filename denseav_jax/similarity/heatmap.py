"""The heat map of a pair, defined once: what evaluation scores and predict draws.

Evaluation (evals/segmentation.py), `predict` (inference/predict.py) and `predict --video`
(inference/video.py) all build their maps here, so the map a user looks at is the map
the prompted-segmentation metrics score (docs/evaluation.md#prompted-segmentation):

  volume   S[b, k, h, w, f, t]: the pair's own audio against its own image
           (dense.matched_volume), clamped at 0 with sim.nonneg, no CLS term; mean over f.
  heads    combined at every step as the score combines them (`reduce_heads`): a sum for
           sim.head_agg='sum', else the max (max_elementwise and max).
  time     a weighted masked mean over t, sum_t x w / max(sum_t w, 1e-3)
           (dense.masked_mean), for every aggregator: mima's masked max would make the map
           one step's, so the definition follows the evaluation (and the release's
           prep_heatmap), not the score. The weights [..., T] say which steps count:
             basic map      the audio mask;
             advanced map   the prompt word's window (as before the maps were unified;
                            the release also multiplies the volume by the audio mask
                            first, which docs/evaluation.md lists as a difference);
             a video frame  the audio mask times Gaussian taps around the frame's time.

The activation over time (`activation`) is the max over image space of each step's
volume, mean over f, per head and of the heads combined.

Every function takes a batch axis first and is plain jax (the callers jit).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from denseav_jax.similarity import dense


@dataclasses.dataclass(frozen=True)
class Options:
  """The config values a heat map depends on (hashable: a jit-cache key)."""
  num_heads: int
  head_agg: str
  nonneg: bool

  @classmethod
  def from_config(cls, config) -> 'Options':
    return cls(int(config.model.num_heads), str(config.sim.head_agg),
               bool(config.sim.nonneg))


def reduce_heads(x: jax.Array, head_agg: str, axis: int) -> jax.Array:
  """Heads of a volume (on `axis`) combined as the score combines them.

  The score sums per-head scores for 'sum' and takes a max otherwise ('max_elementwise'
  maxes the volume over heads; 'max' the heads' scores). Not dense.combine_heads, which
  combines per-head *scores*.
  """
  if head_agg not in dense.HEAD_AGGREGATIONS:
    raise ValueError(f'sim.head_agg={head_agg!r} is not one of {dense.HEAD_AGGREGATIONS}')
  return x.sum(axis) if head_agg == 'sum' else x.max(axis)


def volume(audio: jax.Array, image: jax.Array, opts: Options) -> jax.Array:
  """audio [B, F, T, C], image [B, H, W, C] -> the pairs' volume [B, K, H, W, F, T]."""
  return dense.matched_volume(audio, image, opts.num_heads, opts.nonneg)


def _over_time(weights: jax.Array, ndim: int) -> jax.Array:
  """[B, T] -> [B, 1, ..., 1, T], broadcastable against an ndim-array [B, ..., T]."""
  return weights.reshape(weights.shape[0], *([1] * (ndim - 2)), weights.shape[-1])


def time_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  """x [B, ..., T], weights [B, T] -> [B, ...]: sum_t x w / max(sum_t w, 1e-3)."""
  return dense.masked_mean(x, _over_time(weights, x.ndim), axis=-1)


def maps(steps: jax.Array, weights: jax.Array, head_agg: str
         ) -> tuple[jax.Array, jax.Array]:
  """steps [B, K, H, W, T] (a volume's mean over f), weights [B, T] ->
  (heat [B, H, W]: the heads combined at each step, then the time mean;
   heat_heads [B, K, H, W]: each head's own time mean)."""
  heat = time_mean(reduce_heads(steps, head_agg, 1), weights)
  return heat, time_mean(steps, weights)


def activation(vol: jax.Array, head_agg: str) -> tuple[jax.Array, jax.Array]:
  """vol [B, K, H, W, F, T] -> (per head [B, K, T], heads combined [B, T]).

  A step's activation is its max over image space, then the mean over f (misa's order).
  Combined: the heads' curves summed for 'sum' (misa then sums the heads' time means),
  else the max over heads and space together, as max_elementwise scores it.
  """
  per_head = vol.max(axis=(2, 3)).mean(axis=-2)
  if head_agg == 'sum':
    return per_head, per_head.sum(1)
  return per_head, vol.max(axis=(1, 2, 3)).mean(axis=-2)


def pair_maps(audio: jax.Array, image: jax.Array, mask: jax.Array, opts: Options,
              windows: jax.Array | None = None) -> dict[str, jax.Array]:
  """Everything drawn or scored for a batch of pairs.

  audio [B, F, T, C], image [B, H, W, C], mask [B, T] (the audio mask), windows [B, T]
  (optional word windows). Returns sim [B, K, H, W, T] (the volume's mean over f),
  heat [B, H, W] and heat_heads [B, K, H, W] (the basic maps), activation [B, K, T] and
  combined_activation [B, T], and with windows heat_advanced [B, H, W].
  """
  vol = volume(audio, image, opts)
  steps = vol.mean(axis=-2)
  heat, heat_heads = maps(steps, mask, opts.head_agg)
  act, combined_act = activation(vol, opts.head_agg)
  out = dict(sim=steps, heat=heat, heat_heads=heat_heads, activation=act,
             combined_activation=combined_act)
  if windows is not None:
    out['heat_advanced'] = time_mean(reduce_heads(steps, opts.head_agg, 1), windows)
  return out
