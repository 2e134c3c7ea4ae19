"""Heat maps for one image and one audio clip from a trained or converted DenseAV.

The library behind `python -m denseav_jax.predict` (denseav_jax/predict.py, the command
line; docs/predict.md). For notebooks:

  model, params, config = load_model(DIR)            # or load_model(DIR, config, step)
  image = load_image('cat.jpg', config.input.image_size)           # uint8 [S, S, 3]
  audio, audio_len = load_audio('meow.wav', config)                   # float32 [L], int
  out = predict(model, params, config, image, audio, audio_len)
  # out: image_feats [C, H, W], audio_feats [C, F, T], audio_mask [T] bool,
  #      sim [K, H, W, T], score () -- and heat maps / activations for drawing.
  rgb = draw_figure(image, out, config)                               # uint8 [h, w, 3]

DIR is whatever checkpoint/resolve.py resolves: a converted / exported model
(DIR/params + DIR/config.json) or a training workdir (DIR/checkpoints/STEP, the latest
step unless `step`; the config.json training writes there builds the model unless a config
is given).

The image is resized so its short side is the model's image size (config.input.image_size)
and centre-cropped to a square. The audio (wav, flac, ogg, mp3, ... in any channel count and
rate, decoded with soundfile; or a float .npy / .npz array) keeps its first channel
(channels='mean' averages them), is resampled to config.input.sample_rate with the
project's resampler (soxr) and padded or cut to the model's clip (config.input.audio_samples).

The heat maps are similarity/heatmap.py's, the maps prompted segmentation scores: the
release's volume (the audio mask times the feature product, plus the CLS term with
sim.use_cls), per head and with the heads combined as the score combines them, a mean
over the audio mask's time steps for every aggregator.

Errors a user can fix are errors.UserError (inputs, checkpoint paths) and
errors.CheckpointError (parameters that do not fit the config); their messages name the
file and what to do, and leave naming command-line flags to the command line.
"""

import functools
import math
import os

import jax
import ml_collections
import numpy as np

from denseav_jax import io as io_lib
from denseav_jax import errors
from denseav_jax.checkpoint import resolve
from denseav_jax.data import audio_io
from denseav_jax.data import transforms as data_transforms
from denseav_jax.evals import base as evals_base
from denseav_jax.evals import embed
from denseav_jax.evals import figures
from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.similarity import dense
from denseav_jax.similarity import heatmap
from denseav_jax.trainer import checks

# Audio soundfile decodes (its wheel bundles libsndfile's codecs), and numpy arrays.
AUDIO_EXTENSIONS = ('.wav', '.wave', '.flac', '.ogg', '.oga', '.mp3', '.aif', '.aiff', '.au',
                    '.npy', '.npz')


# ------------------------------------------------------------------------- model

def load_model(checkpoint_dir: str, config: ml_collections.ConfigDict | None = None,
               step: int | None = None):
  """(model, params, config) from a converted model folder or a training workdir.

  checkpoint_dir: anything resolve.resolve accepts (DIR/params + DIR/config.json; a
    training workdir DIR/checkpoints/STEP, its checkpoints folder or one STEP folder).
    `config` overrides the config.json found there and is needed where there is none;
    `step` picks a workdir step (default: the latest).
  Raises resolve.ResolveError (an errors.UserError) when the path names no checkpoint or
  no config, errors.ConfigError naming the key of a bad config value (checks.check_model),
  errors.UserError when the config builds no model otherwise, and errors.CheckpointError
  when the parameters do not fit it or cannot be read.
  """
  if config is not None:  # A bad value is reported before the checkpoint is looked for.
    checks.check_model(config)
  ckpt = resolve.resolve(checkpoint_dir, step, config)
  checks.check_model(ckpt.config)
  try:
    model = denseav.build_model(ckpt.config)
    abstract = params_lib.abstract_params(ckpt.config, model)  # On one local device.
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise errors.UserError(f'cannot build the model from the config of {checkpoint_dir}: {e}'
                           ) from None
  return model, resolve.load_params(ckpt, abstract), ckpt.config


# ------------------------------------------------------------------------ inputs

def open_image(path: str):
  """A decoded PIL image; errors.UserError naming the file if PIL cannot read it."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    img = Image.open(path)
    img.load()
  except FileNotFoundError:
    raise errors.UserError(f'{path} does not exist') from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise errors.UserError(f'{path} is not an image PIL can read ({e}); pass a PNG, '
                           'JPEG or other common image file') from None
  return img


def load_image(path_or_image, size: int) -> np.ndarray:
  """An image file (or PIL image) -> uint8 [size, size, 3]: RGB, short side resized to
  `size` (bilinear, antialiased), centre crop (the evaluation transform,
  docs/data.md#training-transforms)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = path_or_image
  if not isinstance(img, Image.Image):
    img = open_image(path_or_image)
  img = img.convert('RGB')
  w, h = img.size
  if min(w, h) < 1:
    raise errors.UserError(f'image {path_or_image} is empty ({w}x{h})')
  return data_transforms.eval_image(img, size)


def _read_array(path: str, rate: int | None) -> tuple[np.ndarray, int | None]:
  """A waveform saved with numpy -> ([samples] or [samples, channels] float, its rate)."""
  try:
    data = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise errors.UserError(f'{path} does not exist') from None
  except (ValueError, OSError) as e:
    raise errors.UserError(f'{path} is not a readable numpy file ({e})') from None
  if isinstance(data, np.lib.npyio.NpzFile):
    with data:
      keys = list(data.keys())
      if rate is None:
        for k in ('sample_rate', 'sr', 'rate'):
          if k in keys and data[k].size == 1:
            rate = int(data[k])
      arrays = [k for k in keys if data[k].ndim in (1, 2)]
      key = 'audio' if 'audio' in keys else (arrays[0] if len(arrays) == 1 else None)
      if key is None:
        raise errors.UserError(f'{path} holds {keys}: name the waveform "audio" '
                               '(or store exactly one 1-D / 2-D array)')
      x = data[key]
  else:
    x = data
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise errors.UserError(f'{path} holds {x.dtype} data, not a waveform')
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
  if x.ndim == 2:  # The channel axis is the short one (at most 16 channels).
    ch = int(np.argmin(x.shape))
    if x.shape[ch] > 16:
      raise errors.UserError(f'{path} has shape {x.shape}: want [samples] or '
                             '[samples, channels] / [channels, samples] with <= 16 channels')
    x = np.moveaxis(x, ch, 1)
  elif x.ndim != 1:
    raise errors.UserError(f'{path} has shape {x.shape}: want a 1-D waveform '
                           '(or [samples, channels])')
  if not np.all(np.isfinite(x)):
    raise errors.UserError(f'{path} contains NaN or inf')
  return x.astype(np.float32), rate


def clip_length(config) -> int:
  """Samples per model clip (config.input.audio_samples)."""
  return int(config.input.audio_samples)


def load_audio(path: str, config, audio_rate: int | None = None,
               channels: str | None = None) -> tuple[np.ndarray, int]:
  """Audio file -> (float32 [clip_length] at config.input.sample_rate, valid samples).

  Audio files (wav, flac, ogg, mp3, ...) are decoded with soundfile; .npy / .npz hold float
  (or integer, scaled to [-1, 1]) arrays at `audio_rate` (default: the .npz's sample_rate
  entry, else the model rate). Multi-channel audio keeps its first channel (`channels`,
  default config.data.audio_channels: 'first' as the release, or 'mean'); then the
  project's resampler (docs/data.md#audio-decoding) and zero padding / cutting to the clip.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in AUDIO_EXTENSIONS:
    raise errors.UserError(
        f'{path}: unsupported audio format {ext or "(no extension)"!r}; use one of '
        f'{", ".join(AUDIO_EXTENSIONS)} (convert with e.g. ffmpeg -i '
        f'{os.path.basename(path)} out.wav)')
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} does not exist')
  sr = int(config.input.sample_rate)
  channels = channels or config.data.audio_channels
  if ext in ('.npy', '.npz'):
    x, rate = _read_array(path, audio_rate)
    rate = sr if rate is None else int(rate)
    if rate <= 0:
      raise errors.UserError(f'audio_rate={rate} must be positive')
  else:
    try:
      x, rate = audio_io.decode(path)
    except errors.BadExample as e:
      raise errors.UserError(f'{path} cannot be read as audio ({e.reason}: '
                             f'{e.detail}); convert it, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav'
                             ) from None
  if x.size == 0:
    raise errors.UserError(f'{path} holds no samples')
  # Only what the clip needs (and a little more for the resampler's filter) is resampled.
  x = x[:int(math.ceil((clip_length(config) / sr + 0.1) * rate))]
  y = audio_io.resample(audio_io.to_mono(x, channels), rate, sr)
  out, valid = data_transforms.fit_length(y, clip_length(config))
  return out, valid


# -------------------------------------------------------------------- prediction

def _sim_key(config) -> tuple:
  """The config values `from_features` depends on (checked), as a hashable key."""
  k, sim = int(config.model.num_heads), config.sim
  dense.check_options(sim.agg, sim.head_agg, k, config.model.code_dim)
  return (k, str(sim.agg), str(sim.head_agg), bool(sim.nonneg), bool(sim.use_cls),
          bool(sim.mask_silence))


@functools.cache
def _sim_fn(key: tuple):
  """jit of one pair's score, similarity volume, heat maps and activations (_sim_key)."""
  num_heads, agg, head_agg, nonneg, use_cls, mask_silence = key
  opts = heatmap.Options(num_heads, head_agg, nonneg, use_cls)

  def sim_fn(emb):
    # The score as training and retrieval compute it (mask_silence, CLS, pooled vectors).
    score = dense.scores(
        emb['audio'], emb['mask'], emb['image'], num_heads=num_heads, agg=agg,
        head_agg=head_agg, nonneg=nonneg, use_cls=use_cls, audio_cls=emb['audio_vec'],
        image_cls=emb['image_vec'], mask_silence=mask_silence)[0, 0]
    # The maps prompted segmentation scores (similarity/heatmap.py), for every aggregator.
    maps = heatmap.pair_maps(emb['audio'], emb['image'], emb['mask'], opts,
                             audio_cls=emb['audio_cls'], image_cls=emb['image_cls'])
    return dict(image_feats=emb['image'][0].transpose(2, 0, 1),
                audio_feats=emb['audio'][0].transpose(2, 0, 1),
                audio_mask=emb['mask'][0], sim=maps['sim'][0], score=score,
                heatmaps=maps['heat_heads'][0], combined_heatmap=maps['heat'][0],
                activation=maps['activation'][0],
                combined_activation=maps['combined_activation'][0])

  return jax.jit(sim_fn)


FEATURE_INPUTS = ('image', 'audio', 'mask', 'audio_cls', 'image_cls', 'audio_vec',
                  'image_vec')


def from_features(config, emb) -> dict[str, np.ndarray]:
  """`predict`'s result from one pair's features (what it computes after the towers).

  emb: image [1, H, W, C], audio [1, F, T, C], mask [1, T], the CLS vectors audio_cls /
  image_cls [1, C] (the heat maps' CLS term with sim.use_cls), and the vectors the pooled
  scores compare, audio_vec / image_vec [1, C] (embed.tower_fn's outputs).
  """
  out = _sim_fn(_sim_key(config))({k: emb[k] for k in FEATURE_INPUTS})
  out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
  for k, v in out.items():
    out[k] = v.astype(bool) if k == 'audio_mask' else v.astype(np.float32)
  return out


def predict(model, params, config, image_uint8, audio, audio_len) -> dict[str, np.ndarray]:
  """Embeds one (image, audio) pair and its similarity.

  image_uint8: [S, S, 3] (or [1, S, S, 3]) uint8 at the model's image size (load_image);
  audio: [L] (or [1, L]) float waveform at config.input.sample_rate, padded / cut here to
  the clip length; audio_len: valid samples.

  Returns numpy arrays: image_feats [C, H, W], audio_feats [C, F, T], audio_mask [T]
  (bool), sim [K, H, W, T] (the pair's per-head volume as similarity/heatmap.py defines
  it: times the audio mask, the CLS term with sim.use_cls, the sim.nonneg clamp; mean over
  F), score () (dense.scores of the pair with the config's sim options),
  heatmaps [K, H, W] and combined_heatmap [H, W] (similarity/heatmap.py: the mean of sim
  over the audio mask's steps, per head and with the heads combined as the score combines
  them at each step; the maps prompted segmentation scores, whatever the aggregator),
  activation [K, T] (max over image space per step) and combined_activation [T] (the
  same of the heads combined), all float32 except the mask; and audio_len.
  """
  image = np.asarray(image_uint8)
  if image.ndim == 3:
    image = image[None]
  s = config.input.image_size
  if image.shape != (1, s, s, 3) or image.dtype != np.uint8:
    raise ValueError(f'image must be uint8 [{s}, {s}, 3] (see load_image), got '
                     f'{image.dtype} {image.shape}')
  if (config.sim.agg == 'simpool') != (model.sim_agg == 'simpool'):
    raise ValueError(f'config.sim.agg={config.sim.agg!r} but the model was built with '
                     f'{model.sim_agg!r} (simpool owns parameters): rebuild the model')
  audio = np.asarray(audio, np.float32).reshape(-1)
  length = clip_length(config)
  n = min(int(audio_len), length, audio.shape[0])
  if n < 1:
    raise ValueError(f'audio_len={audio_len}: no audio samples')
  wav = np.zeros((1, length), np.float32)
  wav[0, :n] = audio[:n]
  emb = embed.tower_fn(model)(params, image, wav, np.array([n], np.int32))
  out = from_features(config, emb)
  out['audio_len'] = np.int64(n)
  return out


FEATURE_KEYS = ('image_feats', 'audio_feats', 'audio_mask', 'sim', 'score')


def save_features(path: str, result: dict) -> str:
  """Writes the FEATURE_KEYS of a `predict` result to an .npz (np.savez)."""
  with io_lib.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **{k: result[k] for k in FEATURE_KEYS})
  return path


# ----------------------------------------------------------------------- figure

head_names = evals_base.head_names  # Kept here for notebooks that import it.


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
  """Runs of False in a [T] bool mask as (start, end) step ranges."""
  out, start = [], None
  for t, m in enumerate(list(mask) + [True]):
    if not m and start is None:
      start = t
    elif m and start is not None:
      out.append((start, t))
      start = None
  return out


def draw_figure(image: np.ndarray, result: dict, config, title: str = '') -> np.ndarray:
  """The prediction figure as RGB uint8 [h, w, 3]: the image, one heat-map overlay per head
  (+ the heads combined as the score combines them, for K > 1) and the activation over
  time (max over image space per step, per head) with masked steps shaded."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  sim_cfg = config.sim
  k = result['heatmaps'].shape[0]
  s = image.shape[0]
  names = head_names(config)
  maps = [(names[i] if k > 1 else 'similarity', result['heatmaps'][i]) for i in range(k)]
  head_word = {'sum': 'sum', 'max': 'max', 'max_elementwise': 'max'}[sim_cfg.head_agg]
  if k > 1:
    maps.append((f'heads combined ({head_word})', result['combined_heatmap']))
  ncols = 1 + len(maps)
  fig = figures._new_figure((3.2 * ncols, 6.4), 100)  # pylint: disable=protected-access
  grid = fig.add_gridspec(2, ncols, height_ratios=[1.0, 0.75])
  ax = fig.add_subplot(grid[0, 0])
  ax.imshow(image)
  ax.set_title(f'image ({s}x{s} centre crop)', fontsize=9)
  ax.set_axis_off()
  per_head = np.stack([m for _, m in maps[:k]])
  lo, hi = float(per_head.min()), float(per_head.max())
  for j, (name, m) in enumerate(maps):
    ax = fig.add_subplot(grid[0, 1 + j])
    up = metrics_lib.bilinear_resize(m[None].astype(np.float32), (s, s))[0]
    vmin, vmax = (lo, hi) if j < k else (float(m.min()), float(m.max()))
    if vmax <= vmin:
      vmax = vmin + 1e-6
    ax.imshow(image)
    im = ax.imshow(up, cmap='jet', alpha=0.5, vmin=vmin, vmax=vmax, interpolation='bilinear')
    ax.set_title(f'{name}\nmean over the audio mask', fontsize=9)
    ax.set_axis_off()
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=7)

  ax = fig.add_subplot(grid[1, :])
  act = result['activation']
  t_steps = act.shape[-1]
  clip_s = clip_length(config) / config.input.sample_rate
  dt = clip_s / t_steps
  x = (np.arange(t_steps) + 0.5) * dt
  colours = colormaps['tab10']
  for i in range(k):
    ax.plot(x, act[i], color=colours(i % 10), linewidth=1.4,
            label=names[i] if k > 1 else 'max over image')
  if k > 1:
    ax.plot(x, result['combined_activation'], color='black', linewidth=1.0, linestyle='--',
            label=f'heads combined ({head_word})')
  mask = result['audio_mask'] if sim_cfg.mask_silence else np.ones_like(result['audio_mask'])
  for j, (a, b) in enumerate(_spans(mask)):
    ax.axvspan(a * dt, b * dt, color='0.6', alpha=0.35, hatch='//', linewidth=0,
               label='masked (padding / silence)' if j == 0 else None)
  valid_s = float(result['audio_len']) / config.input.sample_rate
  if valid_s < clip_s:
    ax.axvline(valid_s, color='red', linestyle=':', linewidth=1.0,
               label=f'end of audio ({valid_s:.2f} s)')
  score = float(result['score'])
  if (sim_cfg.agg in ('misa', 'mima') and (k == 1 or sim_cfg.head_agg != 'max')
      and sim_cfg.mask_silence):
    # The score is then the masked mean (misa) / max (mima) of the combined curve (the
    # curve is the masked volume's: without sim.mask_silence the score also counts the
    # masked steps' unmasked values).
    ax.axhline(score, color='0.3', linestyle='-.', linewidth=0.8,
               label=f'score (masked {"mean" if sim_cfg.agg == "misa" else "max"} of the '
               'curve)')
  ax.set_xlim(0.0, clip_s)
  ax.set_xlabel('time (s)', fontsize=8)
  ax.set_ylabel('similarity', fontsize=8)
  ax.set_title('activation over time: max over image space of each step\'s similarity',
               fontsize=9)
  ax.tick_params(labelsize=7)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  head = f'score {score:.4f}  (sim.agg={sim_cfg.agg}, sim.head_agg={sim_cfg.head_agg})'
  fig.suptitle(f'{title}\n{head}' if title else head, fontsize=10)
  fig.tight_layout()
  return figures.figure_to_array(fig)
