"""Evaluation figures (matplotlib, Agg canvas, no pyplot / no global backend switch).

Every figure function returns an RGB ``uint8`` array ``[H, W, 3]`` (ready for TensorBoard's
``add_image(..., dataformats="HWC")``); :func:`to_png_bytes` and :func:`save_png` turn such an
array into PNG bytes / a PNG file.

Public API
----------
- ``heatmap_grid(images, heatmaps, titles, ncols=4, cmap="inferno", alpha=0.5, dpi=100)``
- ``activation_over_time(activations, valid_len_s, word_times, clip_seconds, titles, ...)``
- ``figure_to_array(fig)``, ``to_png_bytes(array)``, ``save_png(array, path)``
"""

from __future__ import annotations

import io
import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import bilinear_resize

__all__ = [
    "figure_to_array",
    "to_png_bytes",
    "save_png",
    "heatmap_grid",
    "activation_over_time",
]


def _new_figure(figsize, dpi) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib Figure (with an Agg canvas) to an RGB uint8 array [H, W, 3]."""
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
    data = to_png_bytes(array)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _overlay(image: np.ndarray, heat: np.ndarray, cmap_name: str, alpha: float) -> np.ndarray:
    """Alpha-blend a [0,1] heat map (already at image size) over an RGB uint8 image."""
    cmap = colormaps[cmap_name]
    colored = cmap(np.clip(heat, 0.0, 1.0))[..., :3]
    base = image.astype(np.float32) / 255.0
    out = (1.0 - alpha) * base + alpha * colored
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def heatmap_grid(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str],
                 ncols: int = 4, cmap: str = "inferno", alpha: float = 0.5,
                 dpi: int = 100, cell_inches: float = 2.5) -> np.ndarray:
    """Grid of images with their heat maps overlaid.

    Args:
      images: ``[N, S, S, 3]`` uint8 (any ``[N, Hi, Wi, 3]`` works).
      heatmaps: ``[N, h, w]`` float in [0, 1] (one map per example), or ``[N, K, h, w]``
        (K per-head maps: each example then takes K consecutive cells titled
        ``"{title} (head k)"``). Maps are bilinearly resized to the image size and clipped to
        [0, 1] before colouring.
      titles: N strings (e.g. the prompt word), shown above each cell.
      ncols: cells per row (for the K-head variant, rounded up to a multiple of K so each
        example's heads stay on one row).

    Returns: RGB uint8 array ``[H, W, 3]``.
    """
    images = np.asarray(images)
    heatmaps = np.asarray(heatmaps)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, S, S, 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {images.dtype}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty (N = 0)")
    if heatmaps.ndim == 3:
        heatmaps = heatmaps[:, None]
        per_head = False
    elif heatmaps.ndim == 4:
        per_head = True
    else:
        raise ValueError(f"heatmaps must be [N, h, w] or [N, K, h, w], got shape {heatmaps.shape}")
    if heatmaps.shape[0] != n:
        raise ValueError(f"heatmaps has N={heatmaps.shape[0]} but images has N={n}")
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but images has N={n}")
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    k_heads = heatmaps.shape[1]
    hi, wi = images.shape[1:3]
    resized = bilinear_resize(heatmaps.astype(np.float32), (hi, wi))  # [N, K, Hi, Wi]

    ncols = int(ncols)
    if per_head and k_heads > 1:
        ncols = max(k_heads, int(math.ceil(ncols / k_heads)) * k_heads)
    n_cells = n * k_heads
    ncols = min(ncols, n_cells)
    nrows = int(math.ceil(n_cells / ncols))

    fig = _new_figure((cell_inches * ncols, cell_inches * nrows + 0.3), dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for cell in range(nrows * ncols):
        ax = axes[cell // ncols, cell % ncols]
        ax.set_axis_off()
        if cell >= n_cells:
            continue
        i, k = divmod(cell, k_heads)
        ax.imshow(_overlay(images[i], resized[i, k], cmap, alpha), interpolation="nearest")
        title = f"{titles[i]} (head {k})" if per_head else str(titles[i])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


def activation_over_time(activations: np.ndarray, valid_len_s: np.ndarray,
                         word_times: Sequence[Sequence[Tuple[float, float, str]]],
                         clip_seconds: float, titles: Sequence[str],
                         ylim: Optional[Tuple[float, float]] = None,
                         dpi: int = 100, width_inches: float = 8.0,
                         row_inches: float = 1.8) -> np.ndarray:
    """One subplot per example: activation over time with word/sound spans.

    Args:
      activations: ``[N, T]`` floats; step ``t`` covers ``[t, t+1) * clip_seconds / T`` and is
        plotted at its centre.
      valid_len_s: ``[N]`` seconds of real (non-padded) audio; the padded part is greyed out
        and a dashed line marks the end of the valid region.
      word_times: per example, a list of ``(start_s, end_s, label)`` spans (words or sounds),
        drawn as shaded bands with their label.
      clip_seconds: duration the T steps span (the padded clip length).
      titles: N subplot titles.

    Returns: RGB uint8 array ``[H, W, 3]``.
    """
    activations = np.asarray(activations, dtype=np.float64)
    valid_len_s = np.asarray(valid_len_s, dtype=np.float64)
    if activations.ndim != 2:
        raise ValueError(f"activations must be [N, T], got shape {activations.shape}")
    n, t_steps = activations.shape
    if n == 0 or t_steps == 0:
        raise ValueError(f"activations is empty: shape {activations.shape}")
    if valid_len_s.shape != (n,):
        raise ValueError(f"valid_len_s must be [N]=[{n}], got shape {valid_len_s.shape}")
    word_times = list(word_times)
    if len(word_times) != n:
        raise ValueError(f"word_times has {len(word_times)} entries but activations has N={n}")
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but activations has N={n}")
    clip_seconds = float(clip_seconds)
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")

    x = (np.arange(t_steps) + 0.5) * (clip_seconds / t_steps)
    span_colors = colormaps["tab10"]
    fig = _new_figure((width_inches, row_inches * n + 0.3), dpi)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        ax.plot(x, activations[i], color="black", linewidth=1.2)
        ax.set_xlim(0.0, clip_seconds)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ylims = ax.get_ylim()
        for j, span in enumerate(word_times[i]):
            start, end, label = float(span[0]), float(span[1]), str(span[2])
            ax.axvspan(start, end, color=span_colors(j % 10), alpha=0.3, linewidth=0)
            ax.text(0.5 * (start + end), 0.97, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=7, clip_on=True,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
        v = float(np.clip(valid_len_s[i], 0.0, clip_seconds))
        if v < clip_seconds:
            ax.axvspan(v, clip_seconds, color="0.7", alpha=0.5, hatch="//", linewidth=0)
        ax.axvline(v, color="red", linestyle="--", linewidth=1.0)
        ax.set_ylim(*ylims)
        ax.set_title(str(titles[i]), fontsize=9)
        ax.set_ylabel("activation", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    fig.tight_layout()
    return figure_to_array(fig)
