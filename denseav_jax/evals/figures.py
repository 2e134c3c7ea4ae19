"""Evaluation figures (matplotlib, Agg canvas, no pyplot / no global backend switch).

Every figure function returns an RGB ``uint8`` array ``[H, W, 3]`` (ready for TensorBoard's
``add_image(..., dataformats="HWC")``); :func:`to_png_bytes` and :func:`save_png` turn such an
array into PNG bytes / a PNG file.

Public API
----------
- ``overlay_grid(images, head_maps, heat, gt_masks, titles, head_names)``: one row per
  class: image, each head's heat map, the heads combined, the ground truth.
- ``activation_with_audio(activations, waveforms, audio_len, sample_rate, spans, titles,
  head_names)``: spectrogram above the per-head activation over time, words shaded.
- ``log_spectrogram(wave, sample_rate)``
- ``figure_to_array(fig)``, ``to_png_bytes(array)``, ``save_png(array, path)``
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from denseav_jax import io as io_lib
from denseav_jax.evals.metrics import bilinear_resize

# matplotlib is imported where a figure is drawn: importing it costs ~0.3 s at the start of
# every command that can evaluate (train, evaluate, sweep), and most of their runs draw none.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "figure_to_array",
    "to_png_bytes",
    "save_png",
    "overlay_grid",
    "activation_with_audio",
    "log_spectrogram",
]


def _new_figure(figsize, dpi) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top,redefined-outer-name
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib Figure (with an Agg canvas) to an RGB uint8 array [H, W, 3]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def _check_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(
            f"array must be uint8 [H, W, 3] (or 4), got dtype {array.dtype} shape {array.shape}")
    return array


def to_png_bytes(array: np.ndarray) -> bytes:
    """Encode an RGB(A) uint8 ``[H, W, 3|4]`` array as PNG bytes."""
    array = _check_rgb(array)
    from PIL import Image  # matplotlib depends on pillow

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str) -> str:
    """Write an RGB(A) uint8 array to ``path`` as PNG (parent dirs created). Returns path."""
    return io_lib.write_bytes(path, to_png_bytes(array))


def _overlay(image: np.ndarray, heat: np.ndarray, cmap_name: str, alpha: float) -> np.ndarray:
    """Alpha-blend a [0,1] heat map (already at image size) over an RGB uint8 image."""
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    cmap = colormaps[cmap_name]
    colored = cmap(np.clip(heat, 0.0, 1.0))[..., :3]
    base = image.astype(np.float32) / 255.0
    out = (1.0 - alpha) * base + alpha * colored
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _colourise(heat: np.ndarray, cmap_name: str) -> np.ndarray:
    """A [0,1] heat map as an RGB uint8 picture in `cmap_name`."""
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    colored = colormaps[cmap_name](np.clip(heat, 0.0, 1.0))[..., :3]
    return np.clip(np.round(colored * 255.0), 0, 255).astype(np.uint8)


def overlay_grid(images: np.ndarray, head_maps: np.ndarray, heat: np.ndarray,
                 gt_masks: np.ndarray, titles: Sequence[str], head_names: Sequence[str],
                 heat_title: str = "heat map", cmap: str = "jet", alpha: float = 0.5,
                 dpi: int = 100, cell_inches: float = 2.3) -> np.ndarray:
    """One row per example (one per class): the image, each head's heat map, the heads
    combined (the map the metric scores, on the set's scale), the same map alone on its own
    image's scale, and the ground truth.

    Args:
      images: ``[n, S, S, 3]`` uint8.
      head_maps: ``[n, K, h, w]`` in [0, 1] (per example, normalised jointly over heads).
      heat: ``[n, h, w]`` in [0, 1] (normalised over the whole set, as the metric is).
      gt_masks: ``[n, S, S]`` bool, the prompted class's pixels.
      titles: n row labels (the prompted class); head_names: K column labels.
    """
    images = np.asarray(images)
    head_maps = np.asarray(head_maps, np.float32)
    heat = np.asarray(heat, np.float32)
    gt_masks = np.asarray(gt_masks, bool)
    n = images.shape[0]
    if images.ndim != 4 or images.dtype != np.uint8 or n == 0:
        raise ValueError(f"images must be uint8 [n, S, S, 3], got {images.dtype} {images.shape}")
    if head_maps.ndim != 4 or head_maps.shape[0] != n:
        raise ValueError(f"head_maps must be [n={n}, K, h, w], got {head_maps.shape}")
    if heat.shape != (n,) + head_maps.shape[2:] or gt_masks.shape != (n,) + images.shape[1:3]:
        raise ValueError(f"heat {heat.shape} / gt_masks {gt_masks.shape} do not fit images "
                         f"{images.shape} and head_maps {head_maps.shape}")
    k = head_maps.shape[1]
    hw = images.shape[1:3]
    heads = bilinear_resize(head_maps, hw)
    combined = bilinear_resize(heat, hw)
    # The heat map alone on its own image's scale (min-max within the image): where, in this
    # image, the prompt lands; the overlay beside it uses the metric's one scale for the set.
    lo = combined.min(axis=(1, 2), keepdims=True)
    hi = combined.max(axis=(1, 2), keepdims=True)
    alone = (combined - lo) / np.maximum(hi - lo, 1e-12)
    cols = ["image"] + ([str(h) for h in head_names] if k > 1 else []) + \
        [f"{heat_title} ({'heads combined' if k > 1 else 'the metric'})",
         "alone, own scale", "ground truth"]
    fig = _new_figure((cell_inches * len(cols), cell_inches * n + 0.4), dpi)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for i in range(n):
        cells = [images[i]]
        if k > 1:
            cells += [_overlay(images[i], heads[i, j], cmap, alpha) for j in range(k)]
        cells.append(_overlay(images[i], combined[i], cmap, alpha))
        cells.append(_colourise(alone[i], "inferno"))
        shade = images[i].astype(np.float32) * 0.35
        shade[gt_masks[i]] = images[i][gt_masks[i]]
        cells.append(shade.astype(np.uint8))
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(cell, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
        axes[i, 0].text(-0.04, 0.5, str(titles[i]), transform=axes[i, 0].transAxes,
                        rotation=90, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


def log_spectrogram(wave: np.ndarray, sample_rate: int, window_s: float = 0.025,
                    hop_s: float = 0.01, floor_db: float = 80.0) -> np.ndarray:
    """[freq, time] power in dB (Hann windows), floored at ``floor_db`` below the peak."""
    n = max(16, int(round(window_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    wave = np.asarray(wave, np.float64)
    if wave.size < n:
        wave = np.pad(wave, (0, n - wave.size))
    starts = np.arange(0, wave.size - n + 1, hop)
    frames = wave[starts[:, None] + np.arange(n)[None]] * np.hanning(n)[None]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    db = 10.0 * np.log10(power + 1e-12)
    return np.maximum(db, db.max() - floor_db).T


def activation_with_audio(activations: np.ndarray, waveforms: np.ndarray,
                          audio_len: np.ndarray, sample_rate: int,
                          spans: Sequence[Sequence[Tuple[float, float, str]]],
                          titles: Sequence[str], head_names: Sequence[str],
                          dpi: int = 100, width_inches: float = 9.0,
                          row_inches: float = 2.6) -> np.ndarray:
    """Per example: the spectrogram (log power) above the activation over time of each head,
    with the caption's word (or sound) spans shaded and labelled on both.

    Args:
      activations: ``[n, K, T]`` (max over the image of each step's similarity).
      waveforms: ``[n, L]`` the padded clips; audio_len: ``[n]`` valid samples.
      spans: per example, ``(start_s, end_s, label)`` of each word or sound.
    """
    activations = np.asarray(activations, np.float64)
    waveforms = np.asarray(waveforms, np.float32)
    if activations.ndim != 3 or waveforms.ndim != 2 or len(waveforms) != len(activations):
        raise ValueError(f"activations must be [n, K, T] and waveforms [n, L], got "
                         f"{activations.shape} and {waveforms.shape}")
    n, k, t_steps = activations.shape
    clip_s = waveforms.shape[1] / float(sample_rate)
    x = (np.arange(t_steps) + 0.5) * clip_s / t_steps
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
    colours = colormaps["tab10"]
    fig = _new_figure((width_inches, row_inches * n + 0.3), dpi)
    grid = fig.add_gridspec(2 * n, 1, height_ratios=[1.0, 1.3] * n)
    for i in range(n):
        ax_s = fig.add_subplot(grid[2 * i])
        ax_s.imshow(log_spectrogram(waveforms[i], sample_rate), origin="lower",
                    aspect="auto", cmap="magma", extent=(0.0, clip_s, 0.0, sample_rate / 2))
        ax_s.set_xlim(0.0, clip_s)
        ax_s.set_ylabel("Hz", fontsize=7)
        ax_s.set_title(str(titles[i]), fontsize=9)
        ax_s.tick_params(labelsize=6, labelbottom=False)
        ax_a = fig.add_subplot(grid[2 * i + 1], sharex=ax_s)
        for h in range(k):
            ax_a.plot(x, activations[i, h], color=colours(h % 10), linewidth=1.2,
                      label=str(head_names[h]) if k > 1 else None)
        for j, (t0, t1, label) in enumerate(spans[i]):
            for ax in (ax_s, ax_a):
                ax.axvspan(float(t0), float(t1), color=colours((j + 3) % 10), alpha=0.25,
                           linewidth=0)
            ax_a.text(0.5 * (float(t0) + float(t1)), 0.97, str(label),
                      transform=ax_a.get_xaxis_transform(), ha="center", va="top",
                      fontsize=7, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none",
                                            alpha=0.7))
        v = float(audio_len[i]) / sample_rate
        if v < clip_s:
            ax_a.axvspan(v, clip_s, color="0.7", alpha=0.5, hatch="//", linewidth=0)
        ax_a.set_ylabel("activation", fontsize=7)
        ax_a.tick_params(labelsize=6)
        if k > 1:
            ax_a.legend(fontsize=6, loc="upper right")
    fig.axes[-1].set_xlabel("time (s)", fontsize=8)
    fig.tight_layout()
    return figure_to_array(fig)
