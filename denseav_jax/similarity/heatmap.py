"""The heat map of a pair, defined once: what evaluation scores and predict draws.

Evaluation (evals/segmentation.py), `predict` (inference/predict.py) and `predict --video`
(inference/video.py) all build their maps here, so the map a user looks at is the map
the prompted-segmentation metrics score (docs/evaluation.md#prompted-segmentation). The
definition is the release's (get_pairwise_sims, then eval_utils.prep_heatmap):

  volume   S[b, k, h, w, f, t]: the pair's own audio against its own image, multiplied by
           the audio mask m[b, t] (padded and silent steps are 0), plus the CLS term when
           sim.use_cls (added after the mask, so a masked step holds the CLS term), then
           clamped at 0 with sim.nonneg (dense.matched_volume with the mask); mean over f.
  heads    combined at every step and frequency as the score combines them
           (`reduce_heads`): a sum for sim.head_agg='sum', else the max (max_elementwise
           and max); then the mean over f (the release's order: heads, then frequency).
           Each head's own map takes that head's mean over f.
  time     a weighted mean over t, sum_t x w / max(sum_t w, 1e-3) (dense.masked_mean), for
           every aggregator: mima's masked max would make the map one step's, so the
           definition follows the evaluation (the release's prep_heatmap), not the score.
           The weights [..., T] say which steps count:
             basic map      the audio mask;
             advanced map   the prompt word's window, not the mask: the window's masked
                            steps count as the volume's zeros (CLS term), so a window that
                            runs past the audio is averaged over its whole width, as the
                            release averages it;
             a video frame  the audio mask times Gaussian taps around the frame's time.

The activation over time (`activation`) is the max over image space of each step of the
same volume, mean over f, per head and of the heads combined.

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
  use_cls: bool = False

  @classmethod
  def from_config(cls, config) -> 'Options':
    return cls(int(config.model.num_heads), str(config.sim.head_agg),
               bool(config.sim.nonneg), bool(config.sim.use_cls))


def reduce_heads(x: jax.Array, head_agg: str, axis: int) -> jax.Array:
  """Heads of a volume (on `axis`) combined as the score combines them.

  The score sums per-head scores for 'sum' and takes a max otherwise ('max_elementwise'
  maxes the volume over heads; 'max' the heads' scores). Not dense.combine_heads, which
  combines per-head *scores*.
  """
  if head_agg not in dense.HEAD_AGGREGATIONS:
    raise ValueError(f'sim.head_agg={head_agg!r} is not one of {dense.HEAD_AGGREGATIONS}')
  return x.sum(axis) if head_agg == 'sum' else x.max(axis)


def cls_term(audio_cls: jax.Array, image_cls: jax.Array, num_heads: int) -> jax.Array:
  """Per-head CLS . CLS of each pair: audio_cls [B, C] -> [B, K, 1]; audio_cls [B, T, C]
  (each step its own clip's CLS, for a video timeline) -> [B, K, T]. image_cls [B, C]."""
  a = dense.split_heads(audio_cls, num_heads).astype(jnp.float32)
  v = dense.split_heads(image_cls, num_heads).astype(jnp.float32)
  if a.ndim == 3:
    return jnp.einsum('bkc,bkc->bk', a, v, precision=dense.HIGHEST)[..., None]
  return jnp.einsum('btkc,bkc->bkt', a, v, precision=dense.HIGHEST)


def volume(audio: jax.Array, image: jax.Array, mask: jax.Array, opts: Options,
           audio_cls: jax.Array | None = None, image_cls: jax.Array | None = None
           ) -> jax.Array:
  """The pairs' volume [B, K, H, W, F, T] (module doc): audio [B, F, T, C], image
  [B, H, W, C], mask [B, T] (the audio mask); audio_cls [B, C] or [B, T, C] and image_cls
  [B, C], needed with opts.use_cls."""
  vol = dense.matched_volume(audio, image, opts.num_heads, False, audio_mask=mask)
  if opts.use_cls:
    if audio_cls is None or image_cls is None:
      raise ValueError('sim.use_cls=True: the heat map needs audio_cls and image_cls')
    c = cls_term(audio_cls, image_cls, opts.num_heads)  # [B, K, 1 or T]
    vol = vol + c[:, :, None, None, None, :]
  return jnp.maximum(vol, 0.0) if opts.nonneg else vol


def _over_time(weights: jax.Array, ndim: int) -> jax.Array:
  """[B, T] -> [B, 1, ..., 1, T], broadcastable against an ndim-array [B, ..., T]."""
  return weights.reshape(weights.shape[0], *([1] * (ndim - 2)), weights.shape[-1])


def time_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  """x [B, ..., T], weights [B, T] -> [B, ...]: sum_t x w / max(sum_t w, 1e-3)."""
  return dense.masked_mean(x, _over_time(weights, x.ndim), axis=-1)


def combined_steps(vol: jax.Array, head_agg: str) -> jax.Array:
  """vol [B, K, H, W, F, T] -> [B, H, W, T]: the heads combined, then the mean over f."""
  return reduce_heads(vol, head_agg, 1).mean(axis=-2)


def maps(vol: jax.Array, weights: jax.Array, head_agg: str
         ) -> tuple[jax.Array, jax.Array]:
  """vol [B, K, H, W, F, T] (the volume), weights [B, T] ->
  (heat [B, H, W]: the heads combined (combined_steps), then the time mean;
   heat_heads [B, K, H, W]: each head's mean over f, then the time mean)."""
  heat = time_mean(combined_steps(vol, head_agg), weights)
  return heat, time_mean(vol.mean(axis=-2), weights)


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
              windows: jax.Array | None = None, audio_cls: jax.Array | None = None,
              image_cls: jax.Array | None = None) -> dict[str, jax.Array]:
  """Everything drawn or scored for a batch of pairs.

  audio [B, F, T, C], image [B, H, W, C], mask [B, T] (the audio mask), windows [B, T]
  (optional word windows), audio_cls / image_cls [B, C] (used with opts.use_cls). Returns
  sim [B, K, H, W, T] (the volume's mean over f), heat [B, H, W] and heat_heads
  [B, K, H, W] (the basic maps), activation [B, K, T] and combined_activation [B, T], and
  with windows heat_advanced [B, H, W].
  """
  vol = volume(audio, image, mask, opts, audio_cls, image_cls)
  heat, heat_heads = maps(vol, mask, opts.head_agg)
  act, combined_act = activation(vol, opts.head_agg)
  out = dict(sim=vol.mean(axis=-2), heat=heat, heat_heads=heat_heads, activation=act,
             combined_activation=combined_act)
  if windows is not None:
    out['heat_advanced'] = time_mean(combined_steps(vol, opts.head_agg), windows)
  return out
