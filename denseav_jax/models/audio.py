"""Audio tower: HuBERT (Hugging Face `HubertModel` layout) over a 16 kHz waveform.

front end -> feature projection ([LayerNorm] + Linear) -> [time masking] -> weight-
normalised grouped positional conv -> transformer (pre-norm "stable layer norm" as in
HuBERT-Large, or post-norm as in HuBERT-Base) -> output [B, F=1, T, D] channels-last.

Front ends: `conv` is HuBERT's raw-waveform conv stack ('layer': conv, LayerNorm, GELU
in every layer; 'group': conv, per-channel GroupNorm, GELU in the first layer and conv,
GELU after); `logmel` is a log-mel spectrogram followed by one stride-2 conv, so it also
gives 50 frames per second and is much cheaper for small models trained from scratch.
`HUBERT_VARIANTS` holds the published Base and Large shapes.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.models import layers
from denseav_jax.parallel.partitioning import constrain

# Hugging Face configs of the published HuBERTs (facebook/hubert-base-ls960,
# facebook/hubert-large-ll60k / hubert-large-ls960-ft); DenseAV uses Large with every
# LayerNorm eps set to 1e-4 (the conv front end's norms keep torch's 1e-5).
HUBERT_VARIANTS = {
    'hubert_base': dict(frontend='conv', conv_channels=512, conv_bias=False,
                        feat_extract_norm='group', feat_proj_layer_norm=True, width=768,
                        depth=12, num_heads=12, mlp_dim=3072, pos_conv_kernel=128,
                        pos_conv_groups=16, norm_first=False),
    'hubert_large': dict(frontend='conv', conv_channels=512, conv_bias=True,
                         feat_extract_norm='layer', feat_proj_layer_norm=True, width=1024,
                         depth=24, num_heads=16, mlp_dim=4096, pos_conv_kernel=128,
                         pos_conv_groups=16, norm_first=True),
}


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
  """HTK-style triangular mel filters, [n_fft // 2 + 1, n_mels]."""
  def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)

  def mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  mels = np.linspace(hz_to_mel(20.0), hz_to_mel(sample_rate / 2), n_mels + 2)
  edges = mel_to_hz(mels)
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
  down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(wave: jax.Array, n_fft: int, win_length: int, hop_length: int, n_mels: int,
            sample_rate: int) -> jax.Array:
  """wave: [B, L] -> log-mel [B, frames, n_mels], frames = 1 + (L - win) // hop."""
  n_frames = 1 + (wave.shape[1] - win_length) // hop_length
  idx = np.arange(n_frames)[:, None] * hop_length + np.arange(win_length)[None]
  frames = wave[:, idx] * jnp.asarray(np.hanning(win_length + 1)[:-1], wave.dtype)
  spec = jnp.abs(jnp.fft.rfft(frames.astype(jnp.float32), n=n_fft, axis=-1)) ** 2
  mel = spec @ jnp.asarray(mel_filterbank(n_fft, n_mels, sample_rate))
  return jnp.log(mel + 1e-6).astype(wave.dtype)


class WeightNormConv1D(nn.Module):
  """Grouped 1-D conv with weight norm over the kernel axis (torch weight_norm dim=2).

  weight_v: [K, D // groups, D] (lax 'WIO'), weight_g: [K]; w = g * v / ||v|| with the norm
  over everything but the kernel axis. Padding K // 2 each side, and for even K the last
  output frame is dropped (HuBERT's "same pad" layer).
  """
  features: int
  kernel: int
  groups: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # x: [B, T, D]
    d = x.shape[-1]
    v = self.param('weight_v', layers.with_axes(layers.dense_init, (None, None, 'embed')),
                   (self.kernel, d // self.groups, self.features))
    g = self.param('weight_g', layers.with_axes(
        lambda k, s: jnp.linalg.norm(nn.meta.unbox(v), axis=(1, 2)), (None,)), (self.kernel,))
    b = self.param('bias', layers.with_axes(nn.initializers.zeros, ('embed',)), (self.features,))
    w = v * (g / jnp.linalg.norm(v, axis=(1, 2)))[:, None, None]
    pad = self.kernel // 2
    x = x.astype(self.dtype)
    if self.kernel <= 32:  # Small kernels: shifted matmuls (much faster on CPU).
      y = layers.shifted_conv1d(x, w.astype(self.dtype), self.groups, (pad, pad))
    elif layers.on_cpu():  # Large kernels on CPU: overlap-save FFTs (see fft_conv1d).
      y = layers.fft_conv1d(x, w, self.groups, (pad, pad))
    else:
      y = jax.lax.conv_general_dilated(
          x, w.astype(self.dtype), (1,), [(pad, pad)], dimension_numbers=('NWC', 'WIO', 'NWC'),
          feature_group_count=self.groups)
    if self.kernel % 2 == 0:  # HuBERT's "same pad layer" drops the extra last frame.
      y = y[:, :-1]
    return y + b.astype(self.dtype)


class StridedConv1D(nn.Module):
  """VALID 1-D conv with stride, as one matmul over the gathered taps (nn.Conv layout:
  kernel [K, in, out]). [B, T, C] -> [B, (T - K) // stride + 1, features]."""
  features: int
  kernel: int
  stride: int
  use_bias: bool = True
  dtype: layers.Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel, self.stride
    w = self.param('kernel', layers.with_axes(self.kernel_init, (None, None, 'conv')),
                   (k, x.shape[-1], self.features))
    t_out = (x.shape[1] - k) // s + 1
    if t_out < 1:
      raise ValueError(f'audio of {x.shape[1]} steps is shorter than a conv kernel of {k}')
    x = x.astype(self.dtype)
    taps = [x[:, i:i + s * (t_out - 1) + 1:s] for i in range(k)]  # each [B, t_out, C]
    y = jnp.concatenate(taps, axis=-1) @ w.reshape(-1, self.features).astype(self.dtype)
    if self.use_bias:
      y = y + self.param('bias', layers.with_axes(nn.initializers.zeros, ('conv',)),
                         (self.features,)).astype(self.dtype)
    return y


class ConvLayer(nn.Module):
  """One layer of HuBERT's conv feature extractor: conv, [norm], GELU."""
  features: int
  kernel: int
  stride: int
  use_bias: bool
  norm: str  # 'layer' | 'group' (per-channel GroupNorm over time) | 'none'
  eps: float = 1e-5
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = StridedConv1D(self.features, self.kernel, self.stride, self.use_bias, self.dtype,
                      name='conv')(x)
    if self.norm == 'layer':
      x = layers.LayerNorm(self.eps, self.dtype, 'conv', name='layer_norm')(x)
    elif self.norm == 'group':
      x = nn.GroupNorm(num_groups=self.features, epsilon=self.eps, dtype=self.dtype,
                       param_dtype=jnp.float32,
                       scale_init=layers.with_axes(nn.initializers.ones, ('conv',)),
                       bias_init=layers.with_axes(nn.initializers.zeros, ('conv',)),
                       name='layer_norm')(x)
    return constrain(layers.gelu(x), ('batch', 'length', 'conv'))


class MelConv(nn.Module):
  """Conv1D kernel 3, stride 2, VALID, computed as one matmul over gathered taps."""
  features: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, C] -> [B, (T - 3) // 2 + 1, features]
    return StridedConv1D(self.features, 3, 2, True, self.dtype, name='conv')(x)


class HubertAttention(nn.Module):
  """HuBERT / Hugging Face attention layout: q_proj, k_proj, v_proj, out_proj."""
  num_heads: int
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  lora: layers.LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, n, d = x.shape
    hd = d // self.num_heads
    lora = self.lora or layers.LoraSpec()

    def proj(name, axes=('embed', 'heads')):
      return layers.Linear(d, axes, dtype=self.dtype, lora=lora.on(name), name=name)

    q = proj('q_proj')(x, train) * jnp.asarray(hd ** -0.5, self.dtype)
    k = proj('k_proj')(x, train)
    v = proj('v_proj')(x, train)
    q, k, v = (t.reshape(b, n, self.num_heads, hd) for t in (q, k, v))
    out = layers.attention(q, k, v, self.dropout, train, self)
    return proj('out_proj', ('heads', 'embed'))(out, train)


class FeedForward(nn.Module):
  mlp_dim: int
  activation_dropout: float = 0.0
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  lora: layers.LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lora = self.lora or layers.LoraSpec()
    y = layers.Linear(self.mlp_dim, ('embed', 'mlp'), dtype=self.dtype,
                      lora=lora.on('intermediate_dense'), name='intermediate_dense')(x, train)
    y = constrain(layers.gelu(y), ('batch', 'length', 'mlp'))
    y = nn.Dropout(self.activation_dropout, deterministic=not train)(y)
    y = layers.Linear(x.shape[-1], ('mlp', 'embed'), dtype=self.dtype,
                      lora=lora.on('output_dense'), name='output_dense')(y, train)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class EncoderLayer(nn.Module):
  """HuBERT encoder layer: pre-norm ("stable layer norm", Large) or post-norm (Base).

  With `layerdrop` > 0 in training, the whole layer is skipped with that probability
  (one draw per layer and step, as in Hugging Face).
  """
  num_heads: int
  mlp_dim: int
  ln_eps: float
  norm_first: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  layerdrop: float = 0.0
  dtype: layers.Dtype = jnp.float32
  lora: layers.LoraSpec | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x_in = x = constrain(x, ('batch', 'length', 'embed'))
    drop = nn.Dropout(self.dropout, deterministic=not train)
    attn = HubertAttention(self.num_heads, self.attention_dropout, self.dtype, self.lora,
                           name='attention')
    ln1 = layers.LayerNorm(self.ln_eps, self.dtype, name='layer_norm')
    ln2 = layers.LayerNorm(self.ln_eps, self.dtype, name='final_layer_norm')
    ff = FeedForward(self.mlp_dim, self.activation_dropout, self.dropout, self.dtype,
                     self.lora, name='feed_forward')
    if self.norm_first:
      x = x + drop(attn(ln1(x), train))
      x = x + ff(ln2(x), train)
    else:
      x = ln1(x + drop(attn(x, train)))
      x = ln2(x + ff(x, train))
    if train and self.layerdrop > 0:
      skip = jax.random.uniform(self.make_rng('dropout'), ()) < self.layerdrop
      x = jnp.where(skip, x_in.astype(x.dtype), x)
    return constrain(x, ('batch', 'length', 'embed')), None


def time_mask(rng, batch: int, steps: int, prob: float, length: int, min_masks: int):
  """Hugging Face-style SpecAugment time mask [B, T] (bool): per example
  max(min_masks, int(prob * T / length + U(0, 1))) spans of `length` steps at random
  distinct starts (spans may overlap)."""
  if prob <= 0 or steps < length:
    return jnp.zeros((batch, steps), bool)
  n_max = min(max(min_masks, int(prob * steps / length + 1)), steps - length + 1)
  k_num, k_start = jax.random.split(rng)
  n = jnp.maximum(min_masks, jnp.floor(prob * steps / length
                                       + jax.random.uniform(k_num, (batch,))).astype(jnp.int32))
  n = jnp.minimum(n, n_max)
  scores = jax.random.uniform(k_start, (batch, steps - length + 1))
  starts = jnp.argsort(scores, axis=1)[:, :n_max]  # Distinct random starts.
  valid = jnp.arange(n_max)[None] < n[:, None]
  t = jnp.arange(steps)[None, None]
  hit = (t >= starts[..., None]) & (t < starts[..., None] + length) & valid[..., None]
  return hit.any(axis=1)


class AudioTower(nn.Module):
  frontend: str = 'conv'
  conv_channels: int = 512
  conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = True
  feat_extract_norm: str = 'layer'  # 'layer' (HuBERT-Large) | 'group' (HuBERT-Base).
  conv_ln_eps: float = 1e-5  # The conv front end's norms (torch default, not overridden).
  feat_proj_layer_norm: bool = True
  n_mels: int = 64
  n_fft: int = 512
  win_length: int = 400
  hop_length: int = 160
  width: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  pos_conv_kernel: int = 128
  pos_conv_groups: int = 16
  norm_first: bool = True  # Pre-norm "stable layer norm" (Large) | post-norm (Base).
  ln_eps: float = 1e-5
  dropout: float = 0.0  # hidden_dropout.
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  feat_proj_dropout: float = 0.0
  layerdrop: float = 0.0
  mask_time_prob: float = 0.0  # SpecAugment time masking in training (masked_spec_embed).
  mask_time_length: int = 10
  mask_time_min_masks: int = 2
  sample_rate: int = 16000
  lora: layers.LoraSpec | None = None
  remat: str = 'none'
  dtype: layers.Dtype = jnp.float32

  def num_frames(self, num_samples: int) -> int:
    """Output frames for a clip of `num_samples` samples (HuBERT's conv arithmetic)."""
    if self.frontend == 'logmel':
      n = 1 + (num_samples - self.win_length) // self.hop_length
      return (n - 3) // 2 + 1
    n = num_samples
    for k, s in zip(self.conv_kernels, self.conv_strides):
      n = (n - k) // s + 1
    return n

  @nn.compact
  def __call__(self, wave, train: bool = False):
    """wave: [B, L] normalised waveform. Returns dense [B, 1, T, D]."""
    if self.frontend == 'conv':
      x = wave[:, :, None]
      if len(self.conv_kernels) != len(self.conv_strides):
        raise ValueError('model.audio.conv_kernels and conv_strides differ in length')
      if self.feat_extract_norm not in ('layer', 'group'):
        raise ValueError("model.audio.feat_extract_norm must be 'layer' or 'group', "
                         f'got {self.feat_extract_norm!r}')
      # With remat, each conv layer too: their outputs (512 channels at up to 3.2 kHz) are
      # the tower's largest activations.
      conv_cls = layers.maybe_remat(ConvLayer, self.remat, static_argnums=())
      for i, (k, s) in enumerate(zip(self.conv_kernels, self.conv_strides)):
        if self.feat_extract_norm == 'layer':
          norm = 'layer'
        else:
          norm = 'group' if i == 0 else 'none'
        x = conv_cls(self.conv_channels, k, s, self.conv_bias, norm, self.conv_ln_eps,
                      self.dtype, name=f'conv_layers_{i}')(x)
    elif self.frontend == 'logmel':
      x = log_mel(wave, self.n_fft, self.win_length, self.hop_length, self.n_mels,
                  self.sample_rate)
      x = layers.LayerNorm(self.ln_eps, self.dtype, None, name='mel_norm')(x)
      x = layers.gelu(MelConv(self.conv_channels, self.dtype, name='mel_conv')(x))
    else:
      raise ValueError(f"model.audio.frontend must be 'conv' or 'logmel', got {self.frontend!r}")
    x = FeatureProjection(self.width, self.feat_proj_layer_norm, self.ln_eps,
                          self.feat_proj_dropout, self.dtype, name='feature_projection')(x, train)
    spec = self.param('masked_spec_embed', layers.with_axes(nn.initializers.uniform(1.0),
                                                            ('embed',)), (self.width,))
    if train and self.mask_time_prob > 0:
      m = time_mask(self.make_rng('dropout'), x.shape[0], x.shape[1], self.mask_time_prob,
                    self.mask_time_length, self.mask_time_min_masks)
      x = jnp.where(m[..., None], spec.astype(x.dtype), x)
    pos = WeightNormConv1D(self.width, self.pos_conv_kernel, self.pos_conv_groups, self.dtype,
                           name='pos_conv_embed')(x)
    x = x + layers.gelu(pos)
    norm = layers.LayerNorm(self.ln_eps, self.dtype, name='layer_norm')
    if not self.norm_first:
      x = norm(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    layer_cls = layers.maybe_remat(EncoderLayer, self.remat)
    for i in range(self.depth):
      x, _ = layer_cls(self.num_heads, self.mlp_dim, self.ln_eps, self.norm_first, self.dropout,
                       self.attention_dropout, self.activation_dropout, self.layerdrop,
                       self.dtype, self.lora, name=f'layers_{i}')(x, train)
    if self.norm_first:
      x = norm(x)
    return x[:, None]  # [B, 1, T, D]


class FeatureProjection(nn.Module):
  width: int
  use_norm: bool
  eps: float
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.use_norm:
      x = layers.LayerNorm(self.eps, self.dtype, 'conv', name='layer_norm')(x)
    x = layers.Linear(self.width, ('conv', 'embed'), dtype=self.dtype, name='projection')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)
