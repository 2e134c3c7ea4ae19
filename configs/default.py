"""Every knob of a DenseAV-JAX run, with its default and what it does.

Other configs import this one and override a few fields. The defaults here are the
*tiny* synthetic-world model with one head and no regularisers (`configs/synthetic.py:plain`);
`configs/synthetic.py`, the quick-start model, adds two heads and DenseAV's regularisers;
`configs/denseav.py` is DenseAV at full size on the real data sets.

Usage: `python -m denseav_jax.train --config configs/default.py --workdir DIR
--config.batch_size=64`.
"""

import ml_collections

from denseav_jax.data.synthetic import world


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, dropout and the data stream.

  # ---------------------------------------------------------------- input
  # The model's input geometry, read by every data set, the model, evaluate and predict.
  c.input = ml_collections.ConfigDict()
  c.input.image_size = 64  # S: square images of S x S pixels (DenseAV: 224).
  c.input.audio_samples = 48_000  # L: clips padded / cut to L samples (DenseAV: 164,200).
  c.input.sample_rate = 16_000  # Hz; the audio towers assume 16 kHz mono.

  # ---------------------------------------------------------------- data
  # docs/data.md: the data sets, their layouts, preparation and the transforms.
  c.data = ml_collections.ConfigDict()
  # synthetic | places_audio | audioset | mixed (Places Audio or AudioSet, 1/2 each).
  c.data.name = 'synthetic'
  c.data.raw_dir = ''  # The folder holding the data-set folders as distributed.
  c.data.prepared_dir = ''  # The --out_dir of python -m denseav_jax.prepare (preferred).
  c.data.cache_dir = ''  # Local copy of a gs:// prepared_dir (default ~/.cache/denseav_jax).
  c.data.manifest_dir = ''  # Raw-layout index cache when the data folder is read-only.
  c.data.rescan = False  # Re-index the raw layout (files added or removed since).
  c.data.max_missing_fraction = -1.0  # Unusable listed rows allowed; < 0 = the data set's own.
  c.data.audio_channels = 'first'  # Multi-channel audio: 'first' (release) | 'mean'.
  # Training transforms (the release's values in comments; the synthetic world needs none).
  c.data.image_aug = False  # True: RandomResizedCrop + flip + colour jitter + greyscale.
  c.data.aug = ml_collections.ConfigDict(dict(
      crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5,
      jitter=(0.2, 0.2, 0.2, 0.2),  # Brightness, contrast, saturation, hue.
      grayscale=0.1))
  c.data.quad_mixup = 0.0  # 0.1: P(2x2 grid of 4 half-size images, one the true one).
  c.data.bg_mixup = 0.0  # 0.0: P(true image pasted on another, or the reverse).
  c.data.patch_mixup = 0.0  # 0.0: P(random choice per patch between true and another).
  c.data.patch_size = 8  # patch_mixup's patch (release: ViT patch x train_image_pool = 16).
  c.data.neg_audio = False  # True: splice 1-4 s of another clip in (pos_mask for the loss).
  c.data.extra_audio_masking = False  # True: p 1/2 keep only a random window of the audio.
  c.data.min_audio_fraction = 0.04  # Drop clips whose valid samples are below this fraction.
  c.data.max_bad_fraction = 0.1  # Stop when more of the examples read were unusable...
  c.data.bad_fraction_after = 200  # ...checked once this many examples were tried.
  c.data.num_threads = 2  # Grain reader threads (threads beat processes on 2 cores).
  c.data.worker_processes = 0  # > 0: Grain worker processes instead of threads.
  c.data.prefetch = 4  # Batches prefetched by the input pipeline.
  # The synthetic world (data.name='synthetic').
  c.data.modality = 'mixed'  # Train stream: 'speech', 'sound' or 'mixed' (source label 0/1).
  # Every field of denseav_jax.data.synthetic.world.WorldConfig (documented there) but the
  # geometry (config.input), e.g. num_classes (8..10), min/max_objects, object_scale,
  # train_voices / eval_voices, speed_perturb, snr_db.
  c.data.world = ml_collections.ConfigDict(
      {k: v for k, v in world.WorldConfig().to_dict().items()
       if k not in ('image_size', 'sample_rate', 'audio_seconds')})
  # Train on the four original voices without speed perturbation: measured on the 2-core
  # CPU, all 12 voices + perturbation (the WorldConfig default, variant `manyvoices`) learned
  # the held-out voice far more slowly (speech AP 0.057 vs 0.22 at step 200).
  c.data.world.train_voices = world.TRAIN_VOICES[:4]
  c.data.world.speed_perturb = (1.0, 1.0)

  # --------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.code_dim = 64  # Shared feature width C of both aligners (DenseAV: 384).
  c.model.num_heads = 1  # Similarity heads K (C is split into K groups of C/K).
  # Image tower: a ViT whose token mixer is attention (DINO) or a 3x3 depthwise conv
  # (keeps features local when the tower is trained from scratch).
  c.model.image = ml_collections.ConfigDict(dict(
      patch_size=4,  # DINO ViT-S/8: 8.
      width=64,  # DINO ViT-S: 384.
      depth=2,  # DINO ViT-S: 12. Two 3x3-mixing blocks keep features local.
      num_heads=4,  # Attention heads (only used by the 'attention' mixer).
      mlp_ratio=4,
      mixer='dwconv',  # 'attention' | 'dwconv'.
      ln_eps=1e-4,  # DenseAV builds its ViT with eps 1e-4.
      dropout=0.0,
      token_type='token',  # 'token' (final tokens) | 'key' (last block's attention keys).
      pos_grid=0,  # Grid of the stored positional table (DINO: 28); 0 = image_size / patch.
      remat='none',  # Per-block rematerialisation: 'none' | 'full' | 'dots'.
      finetune=True,  # False: backbone weights frozen (LoRA adapters still train).
      # LoRA on the named Linear layers of every block (release: rank 8, alpha 32,
      # dropout 0.1, targets ('qkv',)); rank 0 = off.
      lora=ml_collections.ConfigDict(dict(rank=0, alpha=32.0, dropout=0.0, targets=('qkv',))),
  ))
  # Audio tower: HuBERT-style (front end -> feature projection -> positional conv ->
  # pre-norm transformer -> final LayerNorm).
  c.model.audio = ml_collections.ConfigDict(dict(
      frontend='logmel',  # 'conv' (HuBERT's raw-waveform convs) | 'logmel' (fast, small models).
      # 'conv' front end: channels, kernels and strides of the conv stack (HuBERT:
      # 512 x 7, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2 -> 320x down-sampling).
      conv_channels=64,
      conv_kernels=(10, 3, 3, 3, 3, 2, 2),
      conv_strides=(5, 2, 2, 2, 2, 2, 2),
      # 'logmel' front end: 25 ms windows every 10 ms, then a stride-2 conv (-> 50 Hz).
      n_mels=64,
      n_fft=512,
      win_length=400,
      hop_length=160,
      width=96,  # HuBERT-Large: 1024.
      depth=2,  # HuBERT-Large: 24.
      num_heads=4,  # HuBERT-Large: 16.
      mlp_dim=384,  # HuBERT-Large: 4096.
      pos_conv_kernel=16,  # HuBERT: 128.
      pos_conv_groups=8,  # HuBERT: 16.
      ln_eps=1e-4,  # DenseAV overrides every HuBERT LayerNorm eps to 1e-4.
      conv_bias=True,  # HuBERT-Large: True, Base: False.
      feat_extract_norm='layer',  # 'layer' (Large) | 'group' (Base: GroupNorm, 1st conv only).
      conv_ln_eps=1e-5,  # The conv front end's norms (torch default; not overridden).
      feat_proj_layer_norm=True,
      norm_first=True,  # Pre-norm "stable layer norm" (Large) | post-norm (Base).
      dropout=0.0,  # HuBERT hidden_dropout (hubert-large-ls960-ft: 0.1).
      attention_dropout=0.0,  # (0.1)
      activation_dropout=0.0,  # (0.1)
      feat_proj_dropout=0.0,  # (0.1)
      layerdrop=0.0,  # Skip whole layers in training with this probability (0.1).
      mask_time_prob=0.0,  # SpecAugment time masking with masked_spec_embed (0.05).
      mask_time_length=10,
      mask_time_min_masks=2,
      remat='none',
      finetune=True,
      lora=ml_collections.ConfigDict(dict(rank=0, alpha=32.0, dropout=0.0,
                                          targets=('q_proj', 'k_proj', 'v_proj'))),
  ))
  c.model.aligner_heads = 4  # Heads of the audio aligner's SA block (DenseAV: 6).
  c.model.aligner_eps = 1e-4  # LayerNorm eps inside the aligners (release: 1e-4).
  c.model.dtype = 'float32'  # Compute dtype: 'float32' | 'bfloat16' (params stay float32).
  c.model.image_aligner = 'image_linear'  # LayerNorm + 1x1 conv (CLS: separate Linear).
  c.model.audio_aligner = 'audio_sa_3_3_pool_2'  # LN, two (1,3)/3 convs, one SA block.
  # Memory levers (docs/pods.md#memory-levers), none changing values or gradients:
  # each tower (with its aligner) over this many sequential chunks of the per-device batch,
  # recomputed chunk by chunk in the backward pass (1 = off); the aligners' remat policy.
  c.model.tower_microbatches = 1
  c.model.aligner_remat = 'none'  # 'none' | 'full' | 'dots'.
  c.model.image_grad = True  # False = release quirk: image branch under no_grad.
  c.model.train_image_pool = 2  # Average-pool the aligned image map in training only.

  # ---------------------------------------------------------- similarity
  c.sim = ml_collections.ConfigDict()
  # misa | mima | sisa | paired (volume reductions) | cavmae | imagebind | simpool (pooled).
  c.sim.agg = 'misa'  # DenseAV: max over image space, masked mean over audio time.
  c.sim.head_agg = 'max_elementwise'  # Max over heads before the reductions | 'sum' | 'max'.
  c.sim.use_cls = False  # Add CLS.CLS per head to the volume.
  c.sim.nonneg = False  # Clamp the volume at 0.
  c.sim.mask_silence = True  # Use the audio mask in the time reductions (False: all ones).
  c.sim.cal_init = 1.0  # Calibrator temperature init; w = clamp(exp(theta), 0.01, 100).
  # Voice-activity mask: leave silent gaps between words out of the time average
  # (on top of the padding mask), in training and in evaluation.
  c.sim.vad = True
  c.sim.vad_threshold_db = 30.0  # Active if frame RMS within this many dB of the clip's max.
  c.sim.vad_frame_ms = 20.0
  # The B x B score matrix: 'scalable' (blocked, mesh-sharded, custom VJP; never more than
  # one block of the volume per device) or 'dense' (the reference: whole volume at once).
  c.sim.impl = 'scalable'
  # (audio rows, images) of the volume materialised at a time per device (capped at the
  # local shard). (32, 8) was fastest on a 2-core CPU at B=128 (C=384, 14x14, T=56).
  c.sim.block = (32, 8)
  c.sim.backward = 'argmax'  # misa/mima: keep argmax indices | 'remat': recompute blocks.
  c.sim.collective = 'ring'  # Images circulate by ppermute | 'allgather'.

  # ----------------------------------------------------------------- loss
  c.loss = ml_collections.ConfigDict()
  c.loss.type = 'nce'  # nce (symmetric InfoNCE) | ce | bce | margin, over the global batch.
  c.loss.margin = 0.0  # Subtracted from the diagonal of the calibrated matrix.
  c.loss.leak = 0.0  # nce/bce: label mass spread evenly over the off-diagonal entries.
  # Regulariser weights by term (docs/method.md#regularisers; release values in comments;
  # 0 = off). Term NAME is logged as train/loss_NAME whether or not it is weighted in.
  c.loss.weights = ml_collections.ConfigDict()
  c.loss.weights.tv = 0.0  # 0.01: temporal smoothness of the matched-pair volume.
  c.loss.weights.neg_audio = 0.0  # 0.01: matched sims on spliced-in negative audio (pos_mask).
  c.loss.weights.mixup = 0.0  # 0.1: matched sims outside the true image's quadrant (image_mask).
  c.loss.weights.silence_l1 = 0.0  # 0.01: |sim| of 250 silent audio steps with every image.
  c.loss.weights.silence_l2 = 0.0  # 0.0: same, squared.
  c.loss.weights.nonneg_pressure = 0.0  # 0.01: min(sim, 0)^2 of 250 x 250 random vectors.
  c.loss.weights.cal_balance = 0.0  # 0.1: max(log(cal_init) - log(w), 0)^2.
  c.loss.weights.specialization = 0.0  # 0.05 (K > 1): |P_i| |P_j| over head pairs.
  c.loss.weights.disentangle = 0.0  # 0.0: other source's heads' P (needs even K, 'source').
  c.loss.num_samples = 250  # Samples drawn by silence_* and nonneg_pressure.

  # ------------------------------------------------------------ training
  # docs/training.md#recipe. The release: phase 1 of 3,000 steps with both backbones frozen,
  # then HuBERT fine-tuned and the image LoRA on; Adam (eps 1e-7), lr 5e-5, warm-up 1,000.
  c.batch_size = 32  # Global contrastive batch (split over the mesh's data x fsdp axes).
  c.num_train_steps = 1200  # Both phases together.
  c.pretrain_steps = 0  # Phase 1 length: backbones frozen (release: 3,000); 0 = no phase 1.
  c.pretrain_lr = 0.0  # Phase 1 learning rate; 0 = config.lr.
  c.lr = 1e-3  # Adam learning rate (release, fine-tuning pretrained towers: 5e-5).
  c.warmup_steps = 100  # Linear warm-up at the start of each phase (release: 1,000)...
  # ...then 'constant' (release), 'cosine' (decay to 0 at the end of the phase) or 'sgdr'
  # (cosine restarts: cycles of lr_cycle_length steps, each twice the last, floor 2 % of lr).
  c.lr_schedule = 'cosine'
  c.lr_cycle_length = 50_000  # 'sgdr' first cycle (release: 50,000).
  c.adam_eps = 1e-7
  c.grad_clip_per_tensor = 10.0  # Clip each parameter's gradient norm separately.
  # Mesh axes as (name, size) pairs over 'data', 'fsdp' and 'tensor' (-1 = all remaining
  # devices; axes left out are 1), e.g. --config.mesh="(('data', 2), ('fsdp', 4))".
  c.mesh = (('data', -1),)
  # Multi-slice TPU / multi-node GPU: the across-slice (or across-node) part of each axis,
  # e.g. (('data', 2),) for two slices; config.mesh is then the mesh within one slice.
  c.mesh_dcn = ()
  # Parameter / optimizer / activation sharding rules (logical axis -> mesh axis):
  # 'fsdp_tp' (params' embed over 'fsdp', mlp / heads over 'tensor') | 'fsdp' | 'tp' |
  # 'dp' (replicated) | [(logical, mesh axis), ...]. With fsdp = tensor = 1, all replicate.
  c.partitioning = 'fsdp_tp'
  # Adam moments: 'params' (sharded like their parameters) | 'batch' (also split over the
  # batch axes data x fsdp, ZeRO stage 1: 1/N of them per device; docs/pods.md#memory-levers).
  c.opt_state_sharding = 'params'
  # Weights a phase freezes (phase 1: both towers; a tower with finetune=False: its backbone)
  # held in 'float32' | 'bfloat16' (half the memory; they are only read, in the compute
  # dtype: with model.dtype='bfloat16' nothing changes; thawed at the phase switch exactly).
  c.frozen_dtype = 'float32'
  c.fsdp_warn_bytes = 4 << 20  # Warn about arrays this large that FSDP leaves whole; 0 = off.
  # A converted checkpoint (`python -m denseav_jax.convert ... --output DIR`) to start from:
  # its parameters replace the freshly initialised ones (shapes must match the config).
  c.init_from = ''
  c.log_every_steps = 25
  # MFU in the progress line and TensorBoard (trainer/mfu.py): the peak FLOP/s of one device;
  # 0 = from the device kind (TPU v4/v5e/v5p/v6e, NVIDIA A100/H100/H200; off on a CPU).
  c.peak_flops_per_device = 0.0
  c.profile_steps = ()  # (first step, count): a jax.profiler trace into WORKDIR/profile.
  # ---------------------------------------------------------- checkpoints
  # docs/training.md#checkpoints: async Orbax saves of the state, the data position of the
  # global stream, the RNG, the phase and the config; resume picks the newest that restores.
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 3  # The newest N are kept...
  c.keep_best_metric = ''  # ...and, if set, the best by this evaluation metric...
  c.keep_best_mode = 'max'  # ...('max' | 'min')...
  c.keep_best = 1  # ...this many of them (a checkpoint is saved at every evaluation).
  c.async_checkpointing = True  # Write checkpoints in the background while training goes on.
  c.resume_strict = True  # Refuse to resume from a checkpoint of a different model config.
  c.eval_every_steps = 400  # Evaluate every this many steps (0 = never periodically).
  c.eval_at_end = True  # Also evaluate when the run reaches num_train_steps.
  # Stop (and checkpoint) after this much training time; 0 = off. A SIGTERM or a preemption
  # notice also finishes the step, saves and exits 0 (docs/training.md#preemption-and-stopping):
  # the save comes first, and an evaluation in progress is abandoned between batches.
  c.max_seconds = 0.0
  # After a stop's checkpoint is on disk, run every evaluator on the stopped step before
  # exiting (False: a stopped run evaluates nothing; a scheduler's grace period rarely
  # allows a whole evaluation).
  c.eval_on_stop = False
  # On several hosts the stop reasons (a SIGTERM on any host, the time budget) are
  # all-gathered every this many steps, and at every logged step, save and evaluation; in
  # between, hosts dispatch ahead without waiting for each other. A stop comes at most this
  # many steps plus one save after the signal. One process checks every step.
  c.stop_check_every_steps = 10

  # ---------------------------------------------------------- evaluation
  # Settings shared by the evaluators (an evaluator's own batch_size / num_figures / block
  # overrides them).
  c.eval_batch_size = 64  # Global evaluation batch (rounded up to the data-parallel size).
  c.eval_num_figures = 8  # Classes / examples drawn in each evaluator's figures (0 = none).
  c.eval_retrieval_block = (32, 8)  # sim.block for the N x N retrieval matrix.
  # The evaluators, by name: config.evals.NAME = dict(type=..., ...) (docs/evaluation.md
  # lists the types and their keys). Metrics are written as 'NAME/METRIC'. Each takes
  # every_steps (default eval_every_steps) and batch_size (default eval_batch_size).
  # Datasets: 'synthetic:SPLIT[:MODALITY]' (the world's own sets) or a data set
  # 'NAME[:SPLIT]' read from data.raw_dir / data.prepared_dir.
  c.evals = ml_collections.ConfigDict()
  c.evals.speech_prompted = dict(type='prompted_segmentation',
                                 dataset='synthetic:speech_prompted', num_examples=256,
                                 advanced=True)
  c.evals.sound_prompted = dict(type='prompted_segmentation',
                                dataset='synthetic:sound_prompted', num_examples=256)
  c.evals.retrieval = dict(type='retrieval', dataset='synthetic:retrieval', num_examples=1024)
  return c
