"""Aligner ablation: the small heads that map each tower's features into the shared space.

Image aligners against DenseAV's `image_linear` (LayerNorm + 1x1 conv), with DenseAV's audio
aligner; then audio aligners against DenseAV's `audio_sa_3_3_pool_2`, with DenseAV's image
aligner (docs/method.md#aligners). One axis each; the `dense` point (both DenseAV's) is shared.
"""

from denseav_jax.configs.ablations import common

from denseav_jax.experiments.sweep import spec

DENSEAV = {'model.image_aligner': 'image_linear', 'model.audio_aligner': 'audio_sa_3_3_pool_2'}
IMAGE = ('image_linear_no_norm', 'image_idlinear')
AUDIO = ('audio_linear', 'audio_sa', 'audio_3_3_pool', 'audio_sa_3_3_pool')


def points():
  dense = (spec.Point('denseav', (('image', 'image_linear'), ('audio', 'audio_sa_3_3_pool_2')),
                      DENSEAV),)
  image = tuple(spec.Point(f'img={a}', (('image', a),),
                           {**DENSEAV, 'model.image_aligner': a}) for a in IMAGE)
  audio = tuple(spec.Point(f'aud={a}', (('audio', a),),
                           {**DENSEAV, 'model.audio_aligner': a}) for a in AUDIO)
  return spec.union(dense, image, audio)


def get_config(arg=None):
  base, overrides = common.base(arg)
  return spec.sweep_config(base=base, points=points(), seeds=common.seeds(arg),
                           overrides=overrides, metric='speech_prompted/basic_ap',
                           description='image and audio aligners (model.*_aligner)')
