"""A hand count of a train step's FLOPs from the config's shapes (docs/pods.md#flops).

Independent of XLA: the matrix products of each tower, aligner and the similarity volume,
2 FLOPs per multiply-add, written out from the architecture (elementwise work, norms and
softmaxes are left out: they are a few per cent). Two parts:

  linear     the towers and aligners, per example: forward, times 3 where the weights
             and the activations both need gradients (a trained tower; an aligner over a
             trained tower), 2 where only one does (an aligner over a frozen tower; a frozen
             tower with LoRA, whose activations need gradients through every layer), 1
             without any gradient (phase 1's frozen towers, the image branch with
             image_grad False);
  quadratic  the similarity volume of every (audio, image) pair of the global batch:
             2 x (image positions after train-time pooling) x (audio steps) x code_dim per
             pair, forward; its backward is an argmax gather (sim.backward 'argmax': a
             factor of the image positions smaller, counted) or a recomputation ('remat':
             3 x forward).

`count(config, batch_size, phase)` returns both, per step and per example, to set against
the compiled step's count (`python -m denseav_jax.compile`; the test: tests/trainer/test_flops.py).
"""

from __future__ import annotations

from typing import Any

from denseav_jax.trainer import optim


def _transformer_layer(tokens: int, width: int, mlp: int) -> float:
  """One pre-norm transformer block: qkv, scores, weighted values, output, MLP."""
  return 2.0 * tokens * width * (3 * width + width + 2 * mlp) + 4.0 * tokens * tokens * width


def _lora(tokens: int, width: int, config_lora, targets_out: dict[str, int]) -> float:
  rank = int(config_lora.rank)
  if not rank:
    return 0.0
  return sum(2.0 * tokens * rank * (width + targets_out[t]) for t in config_lora.targets
             if t in targets_out)


def image_forward(config) -> float:
  """The image tower's forward FLOPs per example (ViT with the attention mixer)."""
  m = config.model.image
  s = int(config.input.image_size)
  grid = s // int(m.patch_size)
  tokens = grid * grid + 1
  width, mlp = int(m.width), int(m.width) * int(m.mlp_ratio)
  if m.mixer != 'attention':
    raise ValueError(f'hand count: model.image.mixer={m.mixer!r} (counted: attention)')
  patch = 2.0 * grid * grid * 3 * int(m.patch_size) ** 2 * width
  out = {'qkv': 3 * width, 'proj': width, 'fc1': mlp, 'fc2': width}
  per_layer = _transformer_layer(tokens, width, mlp) + _lora(tokens, width, m.lora, out)
  return patch + int(m.depth) * per_layer


def audio_frames(config) -> list[int]:
  """Frames after each conv of the front end (HuBERT's arithmetic)."""
  n, out = int(config.input.audio_samples), []
  for k, s in zip(config.model.audio.conv_kernels, config.model.audio.conv_strides):
    n = (n - int(k)) // int(s) + 1
    out.append(n)
  return out


def audio_forward(config) -> float:
  """The audio tower's forward FLOPs per example (HuBERT: conv front end, feature
  projection, positional conv, transformer)."""
  m = config.model.audio
  if m.frontend != 'conv':
    raise ValueError(f'hand count: model.audio.frontend={m.frontend!r} (counted: conv)')
  ch, width = int(m.conv_channels), int(m.width)
  frames = audio_frames(config)
  conv, c_in = 0.0, 1
  for t, k in zip(frames, m.conv_kernels):
    conv += 2.0 * t * int(k) * c_in * ch
    c_in = ch
  t = frames[-1]
  proj = 2.0 * t * ch * width
  pos = 2.0 * t * int(m.pos_conv_kernel) * (width // int(m.pos_conv_groups)) * width
  out = {'q_proj': width, 'k_proj': width, 'v_proj': width, 'out_proj': width,
         'fc1': int(m.mlp_dim), 'fc2': width}
  per_layer = _transformer_layer(t, width, int(m.mlp_dim)) + _lora(t, width, m.lora, out)
  return conv + proj + pos + int(m.depth) * per_layer


def image_grid(config) -> int:
  return int(config.input.image_size) // int(config.model.image.patch_size)


def image_aligner_forward(config) -> float:
  m = config.model
  if not m.image_aligner.startswith('image_linear'):
    raise ValueError(f'hand count: model.image_aligner={m.image_aligner!r} (counted: '
                     'image_linear)')
  g = image_grid(config)
  return 2.0 * (g * g + 1) * int(m.image.width) * int(m.code_dim)


def audio_steps(config) -> int:
  """Audio steps the similarity sees (audio_sa_3_3_pool_2: two (1,3)/3 convs)."""
  t = audio_frames(config)[-1]
  return (t // 3) // 3


def audio_aligner_forward(config) -> float:
  m = config.model
  if m.audio_aligner != 'audio_sa_3_3_pool_2':
    raise ValueError(f'hand count: model.audio_aligner={m.audio_aligner!r} (counted: '
                     'audio_sa_3_3_pool_2)')
  width, code = int(m.audio.width), int(m.code_dim)
  t1 = audio_frames(config)[-1] // 3
  t2 = t1 // 3
  pool1 = 2.0 * t1 * 3 * width * code + 2.0 * width * code  # + the CLS's Linear.
  pool2 = 2.0 * t2 * 3 * code * code
  return pool1 + pool2 + _transformer_layer(t2 + 1, code, 4 * code)


def _factor(params_train: bool, input_grad: bool) -> int:
  return 1 + int(params_train) + int(input_grad)


def count(config, batch_size: int | None = None, phase: int = 2) -> dict[str, Any]:
  """{'linear_per_example', 'linear', 'quadratic', 'total', 'forward' ...} FLOPs of one
  train step of the global batch (default config.batch_size) in `phase`."""
  b = int(batch_size or config.batch_size)
  m = config.model
  tower_trains = {t: phase == 2 and (m[t].finetune or int(m[t].lora.rank) > 0)
                  for t in ('image', 'audio')}
  lora_only = {t: phase == 2 and not m[t].finetune and int(m[t].lora.rank) > 0
               for t in ('image', 'audio')}
  parts = {}
  for side, tower_fwd, aligner_fwd in (('image', image_forward(config),
                                        image_aligner_forward(config)),
                                       ('audio', audio_forward(config),
                                        audio_aligner_forward(config))):
    grads = side == 'audio' or m.image_grad
    if not grads:
      parts[side] = (tower_fwd + aligner_fwd, tower_fwd + aligner_fwd)
      continue
    # The aligner trains in both phases; it needs its input's gradient when the tower
    # below it trains. LoRA-only towers: frozen weights, input gradients through each layer.
    aligner = aligner_fwd * _factor(True, tower_trains[side])
    # A trained tower: weight and activation gradients through every layer (the input
    # gradient of its first layer alone is not needed: a few per mille, left in).
    if lora_only[side]:
      tower = tower_fwd * 2
    else:
      tower = tower_fwd * (3 if tower_trains[side] else 1)
    parts[side] = (tower + aligner, tower_fwd + aligner_fwd)
  pool = max(int(m.train_image_pool), 1)
  positions = (image_grid(config) // pool) ** 2
  steps = audio_steps(config)
  per_pair = 2.0 * positions * steps * int(m.code_dim)
  quad_fwd = per_pair * b * b
  if config.sim.backward == 'remat' or config.sim.agg not in ('misa', 'mima'):
    quad = 3 * quad_fwd
  else:
    quad = quad_fwd + quad_fwd / positions * 2
  linear_per_example = parts['image'][0] + parts['audio'][0]
  return dict(
      batch_size=b, phase=phase,
      image_forward_per_example=parts['image'][1], audio_forward_per_example=parts['audio'][1],
      linear_per_example=linear_per_example, linear=linear_per_example * b,
      quadratic_forward=quad_fwd, quadratic=quad,
      total=linear_per_example * b + quad,
      quadratic_fraction=quad / (linear_per_example * b + quad),
      phase_steps=int(optim.phase_length(config, phase)))
