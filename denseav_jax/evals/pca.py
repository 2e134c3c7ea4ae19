"""PCA pictures of dense features, as the release draws them: the three leading principal
components of the feature vectors shown as red, green and blue.

  image_rgb, audio_rgb = pca_rgb(image_feats, audio_feats)    # float [.., 3] in [0, 1]
  rgb = pca_figure(images, image_rgb, audio_rgb, titles)      # uint8 [h, w, 3]

One PCA is fitted on both modalities' vectors together (the release's `pca([image_feats,
audio_feats])`), so a colour means the same direction of the shared space in an image and
in a spectrogram-like strip. The fit uses at most MAX_FIT vectors (a fixed random subset:
the same input gives the same picture), centred, by np.linalg.svd; each component's sign is
fixed (its largest loading positive). Each component is then scaled to [0, 1] between its
PERCENTILES over every vector of both modalities and clipped (the release min-max scales
each modality separately; one shared scale keeps the colours comparable).
Features are channels-last; predict's saved features ([C, H, W], [C, F, T]) need a
transpose first.
"""

import numpy as np

from denseav_jax.evals import figures
from denseav_jax.evals import metrics as metrics_lib

MAX_FIT = 20_000
PERCENTILES = (1.0, 99.0)
SEED = 0


def fit(vectors: np.ndarray, n_components: int = 3, max_fit: int = MAX_FIT,
        seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
  """[M, C] vectors -> (mean [C], components [n_components, C]) (rows of zeros where the
  data have fewer directions)."""
  x = np.asarray(vectors, np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f'vectors must be [M, C] with M > 0, got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError('features contain NaN or inf')
  if x.shape[0] > max_fit:
    x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], max_fit, replace=False))]
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  comps = np.zeros((n_components, x.shape[1]))
  k = min(n_components, vt.shape[0])
  comps[:k] = vt[:k]
  signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
  comps *= np.where(signs == 0, 1.0, signs)[:, None]
  return mean, comps


def pca_rgb(image_feats, audio_feats, *, max_fit: int = MAX_FIT
            ) -> tuple[np.ndarray, np.ndarray]:
  """image_feats [n, H, W, C], audio_feats [n, F, T, C] -> (image_rgb [n, H, W, 3],
  audio_rgb [n, F, T, 3]), float32 in [0, 1] (module doc)."""
  img = np.asarray(image_feats, np.float32)
  aud = np.asarray(audio_feats, np.float32)
  if img.ndim != 4 or aud.ndim != 4 or img.shape[-1] != aud.shape[-1]:
    raise ValueError('want image_feats [n, H, W, C] and audio_feats [n, F, T, C] with the '
                     f'same C, got {img.shape} and {aud.shape}')
  c = img.shape[-1]
  x = np.concatenate([img.reshape(-1, c), aud.reshape(-1, c)])
  mean, comps = fit(x, 3, max_fit)
  proj = (x - mean) @ comps.T  # [M, 3]
  lo, hi = np.percentile(proj, PERCENTILES, axis=0)
  span = np.where(hi > lo, hi - lo, 1.0)
  rgb = np.where(hi > lo, np.clip((proj - lo) / span, 0.0, 1.0), 0.0).astype(np.float32)
  n_img = img.shape[0] * img.shape[1] * img.shape[2]
  return rgb[:n_img].reshape(*img.shape[:3], 3), rgb[n_img:].reshape(*aud.shape[:3], 3)


def pca_figure(images: np.ndarray, image_rgb: np.ndarray, audio_rgb: np.ndarray,
               titles, dpi: int = 100, row_inches: float = 2.2) -> np.ndarray:
  """One row per example: the image | its features' PCA colours (bilinearly upsampled to
  the image) | the audio features' PCA colours as an [F, T] strip (frequency up, time
  right). images uint8 [n, S, S, 3]; the rest as pca_rgb returns. RGB uint8 [h, w, 3]."""
  images = np.asarray(images)
  image_rgb, audio_rgb = np.asarray(image_rgb), np.asarray(audio_rgb)
  titles = list(titles)
  n = images.shape[0] if images.ndim == 4 else 0
  if (images.dtype != np.uint8 or n == 0 or images.shape[-1] != 3
      or image_rgb.shape[0] != n or audio_rgb.shape[0] != n or len(titles) != n
      or image_rgb.ndim != 4 or audio_rgb.ndim != 4):
    raise ValueError(f'want n >= 1 uint8 images [n, S, S, 3] ({images.dtype} '
                     f'{images.shape}), image_rgb [n, H, W, 3] ({image_rgb.shape}), '
                     f'audio_rgb [n, F, T, 3] ({audio_rgb.shape}) and n titles ({len(titles)})')
  hi, wi = images.shape[1:3]
  up = metrics_lib.bilinear_resize(np.moveaxis(image_rgb.astype(np.float32), -1, 1), (hi, wi))
  up = np.clip(np.moveaxis(up, 1, -1), 0.0, 1.0)
  fig = figures._new_figure((4.0 * row_inches + 0.4, row_inches * n + 0.5), dpi)  # pylint: disable=protected-access
  axes = fig.subplots(n, 3, squeeze=False, gridspec_kw=dict(width_ratios=[1.0, 1.0, 2.0]))
  f_bins, t_steps = audio_rgb.shape[1:3]
  for i in range(n):
    a0, a1, a2 = axes[i]
    a0.imshow(images[i])
    a0.set_title(str(titles[i]), fontsize=9)
    a1.imshow(up[i])
    a2.imshow(np.clip(audio_rgb[i], 0.0, 1.0), origin='lower', aspect='auto',
              interpolation='nearest', extent=(0, t_steps, 0, f_bins))
    a2.set_ylabel('frequency', fontsize=8)
    a2.set_yticks([])
    a2.tick_params(labelsize=7)
    for ax in (a0, a1):
      ax.set_axis_off()
    if i == 0:
      a1.set_title('image features (PCA)', fontsize=9)
      a2.set_title('audio features (PCA)', fontsize=9)
  axes[-1, 2].set_xlabel('time step', fontsize=8)
  fig.tight_layout()
  return figures.figure_to_array(fig)
