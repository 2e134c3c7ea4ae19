"""A look at the synthetic world: a PNG grid of examples, their captions, and its speed.

``write_preview`` writes OUT_DIR/synthetic_preview.png (per example: the image, its class
map and the caption's spectrogram; four examples a row: half from the training stream, then
speech-prompted and sound-prompted ones) and OUT_DIR/synthetic_preview.txt (one line per
example, ``example.describe``); ``ms_per_example`` times the world. The command is
``python -m denseav_jax.tools.synthetic_preview`` (an entry point, so that this module, in
the data layer, imports no command-line plumbing).
"""

from __future__ import annotations

import os
import time

import numpy as np

from denseav_jax import io as io_lib
from denseav_jax.data.synthetic import example
from denseav_jax.data.synthetic import source
from denseav_jax.data.synthetic import world as world_lib

COLUMNS = 4
SCALE = 2              # images and class maps are shown at twice their size (nearest)
SPECTROGRAM_HEIGHT = 48


def _spectrogram_strip(audio: np.ndarray, height: int, width: int) -> np.ndarray:
  """Log-magnitude STFT as a uint8 [height, width] strip (low frequencies at the bottom)."""
  win = 512
  hop = max(1, (len(audio) - win) // width)
  frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop][:width]
  mag = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1)).T      # [F, T]
  db = 20 * np.log10(mag + 1e-5)
  db = np.clip((db - db.max() + 70) / 70, 0, 1)
  rows = np.linspace(0, db.shape[0] - 1, height).astype(int)[::-1]
  return (db[rows] * 255).astype(np.uint8)


def _tile(ex: dict[str, np.ndarray], w: world_lib.WorldConfig) -> np.ndarray:
  """Image | class map over the spectrogram; uint8 [2 S + 48, 4 S, 3]."""
  img = np.repeat(np.repeat(ex["image"], SCALE, 0), SCALE, 1)
  cm = ex["class_map"].astype(np.float32) / w.num_classes
  cm_rgb = (np.stack([cm, 1 - cm, (cm > 0) * 0.6], -1) * 255 * (cm > 0)[..., None]).astype(
      np.uint8)
  cm_rgb = np.repeat(np.repeat(cm_rgb, SCALE, 0), SCALE, 1)
  top = np.concatenate([img, cm_rgb], 1)
  spec = _spectrogram_strip(ex["audio"], SPECTROGRAM_HEIGHT, top.shape[1])
  return np.concatenate([top, np.repeat(spec[..., None], 3, -1)], 0)


def grid(examples: list[dict[str, np.ndarray]], w: world_lib.WorldConfig) -> np.ndarray:
  """The examples' tiles, COLUMNS a row on a white background; uint8 [H, W, 3]."""
  tiles = [np.pad(_tile(ex, w), ((2, 2), (2, 2), (0, 0)), constant_values=255)
           for ex in examples]
  # An incomplete last row is padded with white tiles so the rows line up.
  tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % COLUMNS)
  rows = [np.concatenate(tiles[r:r + COLUMNS], 1) for r in range(0, len(tiles), COLUMNS)]
  return np.concatenate(rows, 0)


def preview_examples(w: world_lib.WorldConfig, n: int,
                     seed: int = 0) -> list[dict[str, np.ndarray]]:
  """n examples: n // 2 of the training stream, then speech- and sound-prompted ones."""
  n_train = n // 2
  n_speech = (n - n_train) // 2
  counts = {"train": n_train, "speech_prompted": n_speech,
            "sound_prompted": n - n_train - n_speech}
  examples = []
  for split, count in counts.items():
    src = source.SyntheticAVSource(split, w, seed=seed)
    examples += [src[i] for i in range(count)]
  return examples


def write_preview(out_dir: str, w: world_lib.WorldConfig | None = None, n: int = 12,
                  seed: int = 0) -> tuple[str, str]:
  """Writes synthetic_preview.png and .txt to `out_dir`; returns their paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w = w if w is not None else world_lib.WorldConfig()
  if n < 1:
    raise ValueError(f"the preview needs at least one example, got {n}")
  examples = preview_examples(w, n, seed)
  os.makedirs(out_dir, exist_ok=True)
  png = os.path.join(out_dir, "synthetic_preview.png")
  with io_lib.atomic_path(png) as tmp:  # A unique temporary name, renamed when whole.
    Image.fromarray(grid(examples, w)).save(tmp, format="PNG")
  txt = io_lib.write_text(os.path.join(out_dir, "synthetic_preview.txt"),
                          "".join(example.describe(ex) + "\n" for ex in examples))
  return png, txt


def ms_per_example(w: world_lib.WorldConfig, reps: int, seed: int = 0) -> float:
  """Milliseconds per training example (the first one, which loads the clips, not timed)."""
  src = source.SyntheticAVSource("train", w, seed=seed)
  src[0]
  t0 = time.perf_counter()
  for i in range(1, reps + 1):
    src[i]
  return (time.perf_counter() - t0) / reps * 1e3
