"""Full-size DenseAV (docs/method.md#model): DINO ViT-S/8 + HuBERT-Large + the release
aligners, trained on the real data sets (docs/data.md).

Variants (`--config configs/denseav.py:VARIANT[,VARIANT...]`):
  (none) | language   one similarity head on Places Audio (the released `denseav_language`).
  sound               one head on AudioSet (`denseav_sound`).
  twohead             two heads on the mixed stream, speech/sound separation (`denseav_2head`).
  base8 / small16 / base16   the same with DINO ViT-B/8, ViT-S/16 or ViT-B/16.
  hubert_base         HuBERT-Base (post-norm, group-norm front end) instead of Large.
  runlocal            tiny towers, small inputs and few steps with the same data pipeline and
                      transforms: runs on a laptop CPU (e.g. `sound,runlocal` on a fixture).
Point it at the data with --config.data.raw_dir=DIR or --config.data.prepared_dir=DIR.
configs/denseav_language.py, denseav_sound.py and denseav_2head.py are the three released
models by name, with what they assume about hardware and a synthetic-world `runlocal`
(`synthetic_runlocal` below).

The release's training settings (its one training config, av_align.yaml, and train.py) are
on: the data transforms (RandomResizedCrop, flip, colour jitter, greyscale; quad mixup 0.1;
negative-audio splicing; extra audio masking) with their regulariser weights (tv, silence
L1, non-negativity pressure, calibrator balance, negative audio, mixup; head specialization
0.05, which only acts with two heads), LoRA (rank 8, alpha 32, dropout 0.1) on every `qkv`
of the frozen DINO, HuBERT fully fine-tuned with its published training-time
dropouts/LayerDrop/time masking, the two-phase recipe (3,000 steps with both backbones frozen,
then fine-tuning; each phase Adam 5e-5 with 1,000 warm-up steps and no decay), a global
contrastive batch of 40, bf16 compute with float32 parameters and optimizer state (the
release: fp16 mixed precision), and the image branch without gradient
(`model.image_grad=False`, the release runs it under torch.no_grad(); set True to train
LoRA and the image aligner). Inputs: 224 x 224 images and 10.26 s clips (164,200 samples ->
512 HuBERT frames -> 56 audio steps). Every model is evaluated as the release validates it:
ADE20K Speech- and Sound-Prompted, retrieval on 1,000 Places Audio val and 1,000 AudioSet
eval pairs, and (two heads) disentanglement. Start from converted weights with
`--config.init_from=DIR` (python -m denseav_jax.convert).
"""


import ml_collections

from denseav_jax import configs
from denseav_jax.configs import default

from denseav_jax.models import audio as audio_lib
from denseav_jax.models import image as image_lib

CLIP_SAMPLES = 164200  # Clips are padded / cut to this many 16 kHz samples (release).
# The release's max_steps (1,000,001) for the fine-tuning phase, which its second trainer
# counts from 0, after the 3,000 frozen-backbone steps: in effect "train until stopped".
PRETRAIN_STEPS = 3000
TRAIN_STEPS = PRETRAIN_STEPS + 1_000_001


IMAGE_VARIANTS = {'base8': 'vit_base_8', 'small16': 'vit_small_16', 'base16': 'vit_base_16'}
VARIANTS = ('language', 'sound', 'twohead', 'hubert_base', 'runlocal', *IMAGE_VARIANTS)


def get_config(arg: str | None = None):
  c = default.get_config()
  variants = configs.variants(arg, VARIANTS, 'configs/denseav.py')
  c.input.image_size = 224
  c.input.audio_samples = CLIP_SAMPLES
  c.data.name = 'places_audio'
  # patch_size is only used by patch_mixup (0 here); the release passes it the ViT patch
  # times the training pool width (8 x 2 = 16), set after the variants below.
  c.data.update(image_aug=True, quad_mixup=0.1, bg_mixup=0.0, patch_mixup=0.0,
                neg_audio=True, extra_audio_masking=True)
  # The paper's evaluation (docs/evaluation.md), as the release validates every model
  # (use_extra_val_sets): ADE20K Speech- and Sound-Prompted (every example) and retrieval on
  # 1,000 pairs each of Places Audio val and AudioSet eval, whichever data it trained on.
  c.evals = ml_collections.ConfigDict()
  c.evals.speech_prompted = dict(type='prompted_segmentation', dataset='ade20k_speech_prompted',
                                 num_examples=0, advanced=True)
  c.evals.sound_prompted = dict(type='prompted_segmentation', dataset='ade20k_sound_prompted',
                                num_examples=0)
  c.evals.retrieval_places = dict(type='retrieval', dataset='places_audio:val',
                                  num_examples=1000)
  c.evals.retrieval_audioset = dict(type='retrieval', dataset='audioset:val',
                                    num_examples=1000)
  c.model.code_dim = 384
  c.model.num_heads = 1
  c.model.image.update(image_lib.VIT_VARIANTS['vit_small_8'])
  c.model.image.update(mixer='attention', mlp_ratio=4, ln_eps=1e-4, dropout=0.0,
                       token_type='token', pos_grid=28, finetune=False)
  c.model.image.lora.update(rank=8, alpha=32.0, dropout=0.1, targets=('qkv',))
  c.model.audio.update(audio_lib.HUBERT_VARIANTS['hubert_large'])
  c.model.audio.update(ln_eps=1e-4, conv_ln_eps=1e-5, dropout=0.1, attention_dropout=0.1,
                       activation_dropout=0.1, feat_proj_dropout=0.1, layerdrop=0.1,
                       mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
                       finetune=True)
  c.model.audio.lora.update(rank=0)
  c.model.aligner_heads = 6
  c.model.image_aligner = 'image_linear'
  c.model.audio_aligner = 'audio_sa_3_3_pool_2'
  c.model.image_grad = False  # Release: image branch under torch.no_grad().
  c.model.train_image_pool = 2
  c.sim.vad = False  # The release masks padding only.
  # The specialization weight is in the release's config for every model; with one head
  # the term is skipped (as the release skips it).
  c.loss.weights.update(tv=0.01, silence_l1=0.01, nonneg_pressure=0.01, cal_balance=0.1,
                        neg_audio=0.01, mixup=0.1, specialization=0.05)
  # The recipe (docs/training.md#recipe): 3,000 steps with both backbones frozen, then
  # HuBERT fine-tuned and the image LoRA on, each phase with a fresh Adam and warm-up.
  c.pretrain_steps = PRETRAIN_STEPS
  c.pretrain_lr = 5e-5
  c.lr = 5e-5
  c.warmup_steps = 1000
  c.lr_schedule = 'constant'
  c.lr_cycle_length = 50_000  # Used with --config.lr_schedule=sgdr.
  c.model.dtype = 'bfloat16'  # bf16 compute; parameters and Adam state stay float32.
  c.batch_size = 40  # Release: 10 per GPU x 4 GPUs, gathered into one contrastive batch.
  c.num_train_steps = TRAIN_STEPS  # Stop earlier with --config.max_seconds or a SIGTERM.
  # The release validates Places Audio and mixed runs every 2 epochs (an epoch of the ~400k
  # Places Audio captions is ~10,000 steps of 40), AudioSet runs every 10,000 steps.
  c.eval_every_steps = 20_000
  c.log_every_steps = 50  # The release's log_every_n_steps.
  c.eval_batch_size = 16
  for variant in variants:
    if variant == 'language':
      pass
    elif variant == 'sound':
      c.data.name = 'audioset'  # The release's 'audio-set-full' (unbalanced train segments).
      c.eval_every_steps = 10_000  # Its val_check_interval (AudioSet is not epoch-validated).
    elif variant == 'twohead':
      c.data.name = 'mixed'  # The release's 'mixed-full': Places Audio or AudioSet, 1/2 each.
      c.model.num_heads = 2
      # enabled is spelled out so a one-head ablation point can switch it off.
      c.evals.disentangle = dict(type='disentangle', speech='places_audio:val',
                                 sound='audioset:val', num_examples=1000, enabled=True)
    elif variant in IMAGE_VARIANTS:
      c.model.image.update(image_lib.VIT_VARIANTS[IMAGE_VARIANTS[variant]])
      c.model.image.pos_grid = 224 // c.model.image.patch_size
    elif variant == 'hubert_base':
      c.model.audio.update(audio_lib.HUBERT_VARIANTS['hubert_base'])
  c.data.patch_size = c.model.image.patch_size * c.model.train_image_pool
  if 'runlocal' in variants:
    _runlocal(c)
  return c


def _runlocal(c):
  """Tiny towers and inputs, a few steps: the real data path on a laptop CPU."""
  c.input.update(image_size=32, audio_samples=32_000)
  c.model.code_dim = 16
  c.model.aligner_heads = 2
  c.model.image.update(patch_size=4, width=32, depth=1, num_heads=2, mixer='dwconv',
                       pos_grid=0, finetune=True)
  c.model.image.lora.update(rank=0)
  c.model.audio.update(frontend='logmel', width=32, depth=1, num_heads=2, mlp_dim=64,
                       n_mels=32, conv_channels=16, pos_conv_kernel=16, pos_conv_groups=8,
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                       feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
  c.model.image_grad = True
  c.data.patch_size = 4
  c.model.dtype = 'float32'  # bf16 is slow on CPUs.
  c.pretrain_steps = 2  # The phase switch happens inside the short run.
  c.pretrain_lr = 1e-3
  c.lr = 1e-3
  c.warmup_steps = 2
  c.lr_schedule = 'constant'
  c.batch_size = 8
  c.num_train_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 0
  c.eval_at_end = False
  c.update(eval_batch_size=8, eval_num_figures=2)
  for entry in c.evals.values():
    if entry.type in ('retrieval', 'disentangle'):
      entry.num_examples = 16


# The synthetic world's stand-ins for the data sets: training stream modality by data set,
# and evaluation set by evaluation set (the speech / sound pair sets of its retrieval split).
SYNTHETIC_MODALITY = {'places_audio': 'speech', 'audioset': 'sound', 'mixed': 'mixed'}
SYNTHETIC_EVAL_SETS = {'ade20k_speech_prompted': 'synthetic:speech_prompted',
                       'ade20k_sound_prompted': 'synthetic:sound_prompted',
                       'places_audio:val': 'synthetic:retrieval:speech',
                       'audioset:val': 'synthetic:retrieval:sound'}


def synthetic_runlocal(c):
  """`runlocal` of the paper configs (configs/denseav_{language,sound,2head}.py): `c` (a
  `VARIANT,runlocal` config: tiny towers) trained on the built-in synthetic world, no
  download, for a few hundred steps on a 2-core CPU, then evaluated on the world's sets.

  What the release trains with stays on: both phases, the transforms (image augmentation,
  quad mixup, negative-audio splicing, extra audio masking) and every regulariser weight.
  The stream is speech for Places Audio, sound for AudioSet and both (source label 0/1) for
  the mixed model; each evaluator keeps its name and reads the world's matching set
  (SYNTHETIC_EVAL_SETS), on fewer examples.
  """
  c.data.modality = SYNTHETIC_MODALITY[c.data.name]
  c.data.name = 'synthetic'
  c.input.update(image_size=64, audio_samples=48_000)  # The world's default scene and clip.
  for entry in c.evals.values():
    for key in ('dataset', 'speech', 'sound'):
      if key in entry:
        entry[key] = SYNTHETIC_EVAL_SETS[entry[key]]
    entry.num_examples = 64 if entry.type == 'prompted_segmentation' else 128
  c.pretrain_steps = 50  # Phase 1 (towers frozen), then phase 2: 250 steps.
  c.warmup_steps = 20
  # The release's contrastive batch. Smaller batches rarely hold the 250 silent audio steps
  # (16 a clip here) that silence_l1 samples, and the term is then skipped.
  c.batch_size = 40
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 0
  c.eval_at_end = True
  c.update(eval_batch_size=32, eval_num_figures=2)
  return c


def paper_config(model: str, name: str, arg: str | None):
  """configs/denseav_NAME.py's config: the release model (arg '') or its 'runlocal' (tiny
  towers trained and evaluated on the synthetic world, CPU minutes)."""
  if configs.variants(arg, ('runlocal',), f'configs/denseav_{name}.py'):
    return synthetic_runlocal(get_config(f'{model},runlocal'))
  return get_config(model)
