"""The built-in synthetic AV world: the default first run (train, evaluate, heat maps).

Variants (`--config configs/synthetic.py:VARIANT`):
  (none)    the quick-start run, sized to finish on a 2-core laptop CPU in minutes.
  runlocal  a seconds-long smoke run (tiny towers, few steps): tests and debugging.
  speech / sound   train on one modality only.
  twohead   K=2 similarity heads on the mixed stream (speech/sound separation).
  manyvoices  train on all 12 voice variants with speed perturbation (slower to learn).
  regularised  twohead with the release's regulariser weights and the data transforms
            they need (negative-audio splicing, quad mixup).
  dense     the quick-start run with the dense reference similarity (sim.impl='dense').
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position

from denseav_jax.data.sources import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str | None = None):
  c = default.get_config()
  variant = arg or ''
  if variant == 'runlocal':
    c.model.image.update(width=32, depth=1, num_heads=2)
    c.model.audio.update(width=32, depth=1, num_heads=2, mlp_dim=64, n_mels=32,
                         conv_channels=16)
    c.model.code_dim = 16
    c.model.aligner_heads = 2
    c.batch_size = 16
    c.num_train_steps = 6
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
    c.eval_every_steps = 0
    for name in ('speech_prompted', 'sound_prompted', 'retrieval'):
      c.evals[name].num_examples = 24
    c.eval.batch_size = 16
    c.eval.num_figures = 4
  elif variant in ('speech', 'sound'):
    c.data.modality = variant
  elif variant == 'twohead':
    c.model.num_heads = 2
    _disentangle_eval(c)
  elif variant == 'manyvoices':  # All 12 training voices with per-word speed perturbation.
    c.data.world.train_voices = synthetic.TRAIN_VOICES
    c.data.world.speed_perturb = synthetic.WorldConfig().speed_perturb
  elif variant == 'regularised':
    c.model.num_heads = 2
    c.loss.update(tv_weight=0.01, silence_l1=0.01, nonneg_pressure=0.01,
                  cal_balance_weight=0.1, specialization_weight=0.05, neg_audio_weight=0.01,
                  mixup_weight=0.1)
    c.data.update(neg_audio=True, quad_mixup=0.1)
    _disentangle_eval(c)
  elif variant == 'dense':
    c.sim.impl = 'dense'
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/synthetic.py; choose one of "
                     "'', 'runlocal', 'speech', 'sound', 'twohead', 'manyvoices', "
                     "'regularised', 'dense'")
  return c


def _disentangle_eval(c):
  """Two-head models: how well the heads separate speech pairs from sound pairs."""
  c.evals.disentangle = dict(type='disentangle', speech='synthetic:retrieval:speech',
                             sound='synthetic:retrieval:sound', num_examples=256)
