"""Audio tower: HuBERT-style encoder over a 16 kHz waveform.

front end -> feature projection (LayerNorm + Linear) -> weight-normalised grouped
positional conv -> pre-norm ("stable layer norm") transformer -> final LayerNorm.

Front ends: `conv` is HuBERT's raw-waveform conv stack (conv, LayerNorm, GELU per
layer); `logmel` is a log-mel spectrogram followed by one stride-2 conv, so it also
gives 50 frames per second and is much cheaper for small models.
Output is channels-last: [B, F=1, T, D].
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from denseav_jax.models import layers


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
  """Grouped 1-D conv with weight norm over the kernel axis (torch weight_norm dim=2)."""
  features: int
  kernel: int
  groups: int

  @nn.compact
  def __call__(self, x):  # x: [B, T, D]
    d = x.shape[-1]
    v = self.param('weight_v', layers.dense_init, (self.kernel, d // self.groups, self.features))
    g = self.param('weight_g', lambda k, s: jnp.linalg.norm(v, axis=(1, 2)), (self.kernel,))
    w = v * (g / jnp.linalg.norm(v, axis=(1, 2)))[:, None, None]
    b = self.param('bias', nn.initializers.zeros, (self.features,))
    pad = self.kernel // 2
    if self.kernel <= 32:  # Small kernels: shifted matmuls (much faster on CPU).
      y = layers.shifted_conv1d(x, w, self.groups, (pad, pad))
    else:
      y = jax.lax.conv_general_dilated(
          x, w.astype(x.dtype), (1,), [(pad, pad)], dimension_numbers=('NWC', 'WIO', 'NWC'),
          feature_group_count=self.groups)
    if self.kernel % 2 == 0:  # HuBERT's "same pad layer" drops the extra last frame.
      y = y[:, :-1]
    return y + b.astype(y.dtype)


class MelConv(nn.Module):
  """Conv1D kernel 3, stride 2, VALID, computed as one matmul over gathered taps."""
  features: int

  @nn.compact
  def __call__(self, x):  # [B, T, C] -> [B, (T - 3) // 2 + 1, features]
    k = self.param('kernel', nn.initializers.lecun_normal(), (3, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    t_out = (x.shape[1] - 3) // 2 + 1
    taps = [x[:, i:i + 2 * (t_out - 1) + 1:2] for i in range(3)]  # each [B, t_out, C]
    y = jnp.concatenate(taps, axis=-1) @ k.reshape(-1, self.features).astype(x.dtype)
    return y + bias.astype(y.dtype)


class SeparateQKVAttention(nn.Module):
  """HuBERT / Hugging Face attention layout: q_proj, k_proj, v_proj, out_proj."""
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, n, d = x.shape
    hd = d // self.num_heads
    q = nn.Dense(d, kernel_init=layers.dense_init, name='q_proj')(x) * hd ** -0.5
    k = nn.Dense(d, kernel_init=layers.dense_init, name='k_proj')(x)
    v = nn.Dense(d, kernel_init=layers.dense_init, name='v_proj')(x)
    q, k, v = (t.reshape(b, n, self.num_heads, hd) for t in (q, k, v))
    attn = nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k), axis=-1)
    attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, n, d)
    return nn.Dense(d, kernel_init=layers.dense_init, name='out_proj')(out)


class EncoderLayer(nn.Module):
  """HuBERT "stable layer norm" (pre-norm) encoder layer."""
  num_heads: int
  mlp_dim: int
  ln_eps: float
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = nn.LayerNorm(epsilon=self.ln_eps, name='layer_norm')(x)
    x = x + drop(SeparateQKVAttention(self.num_heads, self.dropout, name='attention')(y, train))
    y = nn.LayerNorm(epsilon=self.ln_eps, name='final_layer_norm')(x)
    y = nn.Dense(self.mlp_dim, kernel_init=layers.dense_init, name='intermediate_dense')(y)
    y = drop(layers.gelu(y))
    y = nn.Dense(x.shape[-1], kernel_init=layers.dense_init, name='output_dense')(y)
    return x + drop(y)


class AudioTower(nn.Module):
  frontend: str = 'conv'
  conv_channels: int = 512
  conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
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
  ln_eps: float = 1e-5
  dropout: float = 0.0
  sample_rate: int = 16000

  @nn.compact
  def __call__(self, wave, train: bool = False):
    """wave: [B, L] normalised waveform. Returns dense [B, 1, T, D]."""
    if self.frontend == 'conv':
      x = wave[:, :, None]
      if len(self.conv_kernels) != len(self.conv_strides):
        raise ValueError('model.audio.conv_kernels and conv_strides differ in length')
      for i, (k, s) in enumerate(zip(self.conv_kernels, self.conv_strides)):
        x = nn.Conv(self.conv_channels, (k,), strides=(s,), padding='VALID',
                    name=f'conv_{i}')(x)
        x = nn.LayerNorm(epsilon=self.ln_eps, name=f'conv_norm_{i}')(x)
        x = layers.gelu(x)
    elif self.frontend == 'logmel':
      x = log_mel(wave, self.n_fft, self.win_length, self.hop_length, self.n_mels,
                  self.sample_rate)
      x = nn.LayerNorm(epsilon=self.ln_eps, name='mel_norm')(x)
      # A (3,) conv with stride 2, as stride-2 pairs of frames plus a shifted third tap.
      x = MelConv(self.conv_channels, name='mel_conv')(x)
      x = layers.gelu(x)
    else:
      raise ValueError(f"model.audio.frontend must be 'conv' or 'logmel', got {self.frontend!r}")
    x = nn.LayerNorm(epsilon=self.ln_eps, name='projection_norm')(x)
    x = nn.Dense(self.width, kernel_init=layers.dense_init, name='projection')(x)
    pos = WeightNormConv1D(self.width, self.pos_conv_kernel, self.pos_conv_groups,
                           name='pos_conv')(x)
    x = x + layers.gelu(pos)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = EncoderLayer(self.num_heads, self.mlp_dim, self.ln_eps, self.dropout,
                       name=f'layers_{i}')(x, train)
    x = nn.LayerNorm(epsilon=self.ln_eps, name='layer_norm')(x)
    return x[:, None]  # [B, 1, T, D]
