"""The synthetic ablation study: every axis of the other files in this folder in one sweep.

One `default` point (the quick-start config as it was before the study: misa, K = 1, every
regulariser on, DenseAV's aligners, both towers trained, batch 32) sits on every axis; each axis then adds its other
values as points labelled AXIS=VALUE, so the default is trained once per seed instead of
once per axis. The report draws one plot per axis, each with the default point on it.

  python -m denseav_jax.sweep --config configs/ablations/study.py --workdir runs/study
  python -m denseav_jax.report runs/study --out docs/ablations/study.md

docs/ablations.md has the results, the budget per run and the seeds that ran.
"""

from denseav_jax import errors
from denseav_jax.configs.ablations import aggregator
from denseav_jax.configs.ablations import aligners
from denseav_jax.configs.ablations import common
from denseav_jax.configs.ablations import finetune
from denseav_jax.configs.ablations import heads
from denseav_jax.configs.ablations import lora
from denseav_jax.configs.ablations import regularisers

from denseav_jax.experiments.sweep import spec

BATCH = spec.axis('batch', {f'b{b}': {'batch_size': b} for b in (16, 32, 64)})
# (points of one axis or a union of axes, the default's value label on each axis). The
# aligners keep three of their six variants and the batch two of its sizes to fit the
# budget of a 2-core CPU; configs/ablations/aligners.py and batch_size.py have them all.
AXES = (
    (aggregator.AXIS, {'agg': 'misa'}),
    (heads.AXIS, {'heads': 'k1'}),
    (regularisers.axis(tuple(t for t in regularisers.TERMS if t != 'special')),
     {'off': 'none'}),
    (tuple(p for p in aligners.points()
           if p.label in ('denseav', 'img=image_linear_no_norm', 'aud=audio_linear',
                          'aud=audio_sa')),
     {'image': 'image_linear', 'audio': 'audio_sa_3_3_pool_2'}),
    (finetune.AXIS, {'finetune': 'both'}),
    (lora.SYNTHETIC, {'lora': 'finetune'}),
    (BATCH, {'batch': 'b32'}),
)


def points():
  coords = {}
  rest = []
  for axis_points, default in AXES:
    coords.update(default)
    for p in axis_points:
      if all(dict(p.coords).get(a) == v for a, v in default.items()):
        continue  # The shared default point.
      label = p.label if '=' in p.label else f'{p.coords[0][0]}={p.label}'
      same = [i for i, q in enumerate(rest) if q.overrides == p.overrides]
      if same:  # The same run on two axes (finetune=frozen is lora=frozen): train it once.
        q = rest[same[0]]
        rest[same[0]] = spec.Point(q.label, q.coords + p.coords, q.overrides)
      else:
        rest.append(spec.Point(label, p.coords, p.overrides))
  return spec.union((spec.Point('default', tuple(coords.items()), {}),), rest)


def get_config(arg=None):
  if arg:
    raise errors.ConfigError('configs/ablations/study.py is the synthetic study; for a paper model '
                     'run one axis file with its ARG, e.g. configs/ablations/aggregator.py:2head')
  base, overrides = common.base(None)
  # The study's default is the one-head model it started from (the quick-start config
  # before the study); its best point, heads=k2, then became the quick-start default.
  overrides['model.num_heads'] = 1
  return spec.sweep_config(base=base, points=points(), seeds=common.STUDY_SEEDS,
                           overrides=overrides, metric='speech_prompted/basic_ap',
                           description='the synthetic ablation study (every axis, one default)')
