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
    "overlay_grid",
    "activation_with_audio",
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


def overlay_grid(images: np.ndarray, head_maps: np.ndarray, heat: np.ndarray,
                 gt_masks: np.ndarray, titles: Sequence[str], head_names: Sequence[str],
                 heat_title: str = "heat map", cmap: str = "jet", alpha: float = 0.5,
                 dpi: int = 100, cell_inches: float = 2.3) -> np.ndarray:
    """One row per example (one per class): the image, each head's heat map, the heads
    combined (the map the metric scores) and the ground truth.

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
    cols = ["image"] + ([str(h) for h in head_names] if k > 1 else []) + \
        [f"{heat_title} ({'heads combined' if k > 1 else 'the metric'})", "ground truth"]
    fig = _new_figure((cell_inches * len(cols), cell_inches * n + 0.4), dpi)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for i in range(n):
        cells = [images[i]]
        if k > 1:
            cells += [_overlay(images[i], heads[i, j], cmap, alpha) for j in range(k)]
        cells.append(_overlay(images[i], combined[i], cmap, alpha))
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
