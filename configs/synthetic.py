"""The built-in synthetic AV world: the default first run (train, evaluate, heat maps).

Variants (`--config configs/synthetic.py:VARIANT`):
  (none)    the quick-start run, sized to finish on a 2-core laptop CPU in minutes: K = 2
            heads (max_elementwise), misa, with DenseAV's regularisers and the data
            transforms they need (negative-audio splicing, quad mixup): the best point of
            the synthetic ablation study (docs/ablations.md).
  runlocal  a seconds-long smoke run (tiny towers, few steps, one head, no regularisers).
  plain     the first-run model before the study: one head and the contrastive loss alone
            (no regularisers or transforms); grounding peaks early, then fades
            (docs/synthetic.md).
  speech / sound   train on one modality only.
  twohead   the default with the release's head-specialisation weight and the
            disentanglement evaluation: what two heads do left alone.
  disentangle  twohead with the disentanglement loss: head 0 for speech, head 1 for sound
            (docs/synthetic.md#chirp-vs-chat).
  manyvoices  train on all 12 voice variants with speed perturbation (slower to learn).
  dense     the quick-start run with the dense reference similarity (sim.impl='dense').
"""

from denseav_jax import configs
from denseav_jax import errors
from denseav_jax.configs import default

from denseav_jax.data.synthetic import world

# loss.weights.disentangle of the `disentangle` variant (docs/synthetic.md#chirp-vs-chat).
DISENTANGLE_WEIGHT = 10.0


# DenseAV's regulariser weights (docs/method.md#regularisers) and the transforms that feed
# two of them. Without them the contrastive loss alone grows a component shared by every
# audio step, and speech grounding fades after a few hundred steps (docs/synthetic.md).
REGULARISERS = dict(tv=0.01, silence_l1=0.01, nonneg_pressure=0.01, cal_balance=0.1,
                    neg_audio=0.01, mixup=0.1)
TRANSFORMS = dict(neg_audio=True, quad_mixup=0.1)
VARIANTS = ('', 'runlocal', 'plain', 'speech', 'sound', 'twohead', 'disentangle',
            'manyvoices', 'dense')


def get_config(arg: str | None = None):
  c = default.get_config()
  names = configs.variants(arg, VARIANTS, 'configs/synthetic.py')
  if len(names) > 1:
    raise errors.ConfigError(f'configs/synthetic.py:{arg}: pick one variant')
  variant = names[0] if names else ''
  if variant not in ('runlocal', 'plain'):
    c.loss.weights.update(REGULARISERS)
    c.data.update(TRANSFORMS)
    # Two similarity heads, combined by their elementwise maximum: the study's best point
    # (configs/ablations/study.py, heads=k2; docs/ablations.md).
    c.model.num_heads = 2
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
    c.eval_batch_size = 16
    c.eval_num_figures = 4
  elif variant in ('speech', 'sound'):
    c.data.modality = variant
  elif variant in ('twohead', 'disentangle'):
    c.model.num_heads = 2
    c.loss.weights.specialization = 0.05  # The release's weight for K > 1.
    if variant == 'disentangle':
      c.loss.weights.disentangle = DISENTANGLE_WEIGHT
    _disentangle_eval(c)
  elif variant == 'manyvoices':  # All 12 training voices with per-word speed perturbation.
    c.data.world.train_voices = world.TRAIN_VOICES
    c.data.world.speed_perturb = world.WorldConfig().speed_perturb
  elif variant == 'dense':
    c.sim.impl = 'dense'
  return c


def _disentangle_eval(c):
  """Two-head models: how well the heads separate speech pairs from sound pairs."""
  c.evals.disentangle = dict(type='disentangle', speech='synthetic:retrieval:speech',
                             sound='synthetic:retrieval:sound', num_examples=256, enabled=True)
