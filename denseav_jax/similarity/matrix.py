"""The B x B score matrix of a batch as `config.sim` asks for it: the memory-bounded sharded
operator (sim.impl='scalable', scalable.py) or the dense reference (sim.impl='dense',
dense.py), which give the same matrix (tests/similarity/test_scalable.py)."""

from typing import Sequence

from denseav_jax import errors
from denseav_jax.parallel import sharding
from denseav_jax.similarity import dense
from denseav_jax.similarity import scalable

IMPLS = ('scalable', 'dense')


def check(config) -> None:
  """config.sim's keys (and the evaluation's retrieval block) can work with config.model:
  raises errors.ConfigError naming the key, before anything is traced."""
  sim = config.sim
  if sim.impl not in IMPLS:
    raise errors.ConfigError(f'config.sim.impl={sim.impl!r} is not one of {IMPLS}')
  dense.check_options(sim.agg, sim.head_agg, config.model.num_heads)
  if sim.impl == 'scalable':
    scalable.check_options(tuple(sim.block), sim.backward, sim.collective)
  block = tuple(config.eval_retrieval_block)
  if len(block) != 2 or min(block) < 1:
    raise errors.ConfigError(f'config.eval_retrieval_block={block!r}: give (audio rows, '
                             'images), both >= 1, e.g. (32, 8)')
  if not float(sim.cal_init) > 0:
    raise errors.ConfigError(f'config.sim.cal_init={sim.cal_init} must be > 0 (the '
                             "calibrator's initial temperature; the release uses 1.0)")
  if not float(sim.vad_frame_ms) > 0:
    raise errors.ConfigError(f'config.sim.vad_frame_ms={sim.vad_frame_ms} must be > 0')


def score_matrix(config, mesh, audio_feats, audio_mask, image_feats, audio_vec=None,
                 image_vec=None, *, head_agg: str | None = None, per_head: bool = False,
                 block: Sequence[int] | None = None):
  """The score matrix as `config.sim` asks for it ('scalable' or the 'dense' reference).

  audio_vec / image_vec: the CLS vectors (or, for sim.agg='simpool', the pooled vectors).
  head_agg / block override config.sim's (evaluation sums heads like the release).
  """
  sim = config.sim
  kw = dict(num_heads=config.model.num_heads, agg=sim.agg,
            head_agg=head_agg or sim.head_agg, nonneg=sim.nonneg, use_cls=sim.use_cls,
            mask_silence=sim.mask_silence, per_head=per_head)
  if sim.impl == 'dense':
    return dense.scores(audio_feats, audio_mask, image_feats, audio_cls=audio_vec,
                        image_cls=image_vec, **kw)
  if sim.impl != 'scalable':
    raise errors.ConfigError(f'config.sim.impl={sim.impl!r} is not one of {IMPLS}')
  return scalable.score_matrix(
      audio_feats, audio_mask, image_feats, audio_vec, image_vec, mesh=mesh,
      batch_axes=sharding.batch_axes(mesh), block=tuple(block or sim.block),
      backward=sim.backward, collective=sim.collective, **kw)
