"""On-device input preprocessing: image normalisation, waveform normalisation, audio masks.

These run inside the jitted model functions, so the host ships uint8 images and raw
waveforms and the accelerator does the rest.
"""

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [B, S, S, 3] (or float in [0, 1]) -> ImageNet-normalised float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def normalize_waveform(wave: jax.Array) -> jax.Array:
  """(x - mean) / sqrt(var + 1e-7) over each whole padded clip (docs/method.md#audio-tower).
  wave: [B, L]."""
  mean = wave.mean(axis=1, keepdims=True)
  var = wave.var(axis=1, keepdims=True)
  return (wave - mean) / jnp.sqrt(var + 1e-7)


def resize_linear(x: jax.Array, size: int) -> jax.Array:
  """Linear resize of the last axis with half-pixel centres and no antialiasing.

  Matches torch's F.interpolate(mode='linear', align_corners=False), which is what the
  release uses for masks (jax.image.resize antialiases when down-sampling, so it differs).
  """
  n = x.shape[-1]
  src = (np.arange(size) + 0.5) * (n / size) - 0.5
  src = np.clip(src, 0.0, n - 1)
  i0 = np.floor(src).astype(np.int32)
  i1 = np.minimum(i0 + 1, n - 1)
  lam = jnp.asarray(src - i0, x.dtype)
  return x[..., i0] * (1 - lam) + x[..., i1] * lam


def valid_sample_mask(audio_len: jax.Array, length: int,
                      audio_start: jax.Array | None = None) -> jax.Array:
  """[B] ends (and starts, default 0) of the valid samples -> [B, L] float mask, 1 on real
  audio in [start, end), 0 on padding and on audio masked out by extra masking."""
  t = jnp.arange(length)[None, :]
  valid = t < audio_len[:, None]
  if audio_start is not None:
    valid &= t >= audio_start[:, None]
  return valid.astype(jnp.float32)


def voice_activity(wave: jax.Array, valid: jax.Array, frame: int, threshold_db: float):
  """Energy voice-activity detection. Returns [B, L // frame] float, 1 on active frames.

  A frame is active when its RMS is within `threshold_db` of the clip's loudest frame;
  one frame of dilation on each side keeps word onsets and tails.
  """
  b, n = wave.shape
  nf = n // frame
  w = (wave[:, :nf * frame] * valid[:, :nf * frame]).reshape(b, nf, frame)
  rms = jnp.sqrt(jnp.mean(w ** 2, axis=-1) + 1e-12)
  active = rms >= rms.max(axis=1, keepdims=True) * 10.0 ** (-threshold_db / 20.0)
  active = active & (rms > 1e-5)
  padded = jnp.pad(active, ((0, 0), (1, 1)))
  active = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
  return active.astype(jnp.float32)


def audio_mask(wave: jax.Array, audio_len: jax.Array, num_steps: int, *, vad: bool,
               vad_frame: int = 320, vad_threshold_db: float = 30.0,
               rng: jax.Array | None = None,
               audio_start: jax.Array | None = None) -> jax.Array:
  """The [B, T] bool mask of audio steps that count in time reductions
  (docs/method.md#audio-mask); valid samples are [audio_start, audio_len).

  The valid-sample mask (optionally times voice activity) is linearly resized to T steps
  and thresholded at 0.01. A row with no true step gets one: a random step if `rng` is
  given (as in training), else step 0.
  """
  valid = valid_sample_mask(audio_len, wave.shape[1], audio_start)
  if vad:
    nf = wave.shape[1] // vad_frame
    frames_valid = valid[:, :nf * vad_frame].reshape(valid.shape[0], nf, vad_frame).mean(-1)
    soft = frames_valid * voice_activity(wave, valid, vad_frame, vad_threshold_db)
  else:
    soft = valid
  mask = resize_linear(soft, num_steps) > 0.01
  empty = ~mask.any(axis=1)
  if rng is not None:
    pick = jax.random.randint(rng, (mask.shape[0],), 0, num_steps)
  else:
    pick = jnp.zeros((mask.shape[0],), jnp.int32)
  fix = jax.nn.one_hot(pick, num_steps, dtype=jnp.bool_) & empty[:, None]
  return mask | fix
