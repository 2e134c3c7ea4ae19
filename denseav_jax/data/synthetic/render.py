"""Images of the synthetic world: each class's shape, colour and texture, drawn in a scene.

``render_scene`` draws the objects of an example on a cluttered, low-saturation background
and returns the image with its exact class map (which object each pixel shows). Every random
draw comes from the example's generator, in a fixed order, so a scene is a pure function of
that generator's state.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from denseav_jax.data.synthetic import world


# ------------------------------------------------------------------------------------------------
# Objects: shapes, colours, textures
# ------------------------------------------------------------------------------------------------
# Shapes are indicator functions of local coordinates (u, v) in [-1, 1] (v points down), drawn
# inside a square of half-side r around the object's centre.


def _star(u, v):
  rho = np.sqrt(u * u + v * v)
  theta = np.arctan2(u, -v)                     # 0 at the top point
  sector = 2 * np.pi / 5
  phi = np.mod(theta, sector)
  phi = np.minimum(phi, sector - phi)           # fold onto [0, pi/5]
  x, y = rho * np.cos(phi), rho * np.sin(phi)
  # Edge from outer vertex (1, 0) to inner vertex at angle pi/5, radius 0.45.
  ix, iy = 0.45 * np.cos(sector / 2), 0.45 * np.sin(sector / 2)
  return (x - 1.0) * iy - y * (ix - 1.0) <= 0.0


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ball": lambda u, v: u * u + v * v <= 1.0,
    "box": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.85,
    "tent": lambda u, v: (v <= 0.8) & (np.abs(u) <= 0.55 * (v + 1.0)),
    "star": _star,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    "cross": lambda u, v: (np.minimum(np.abs(u), np.abs(v)) <= 0.32)
                          & (np.maximum(np.abs(u), np.abs(v)) <= 1.0),
    "moon": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + (v + 0.15) ** 2 >= 0.64),
    "kite": lambda u, v: np.abs(u) / 0.65 + np.abs(v) <= 1.0,
    "drum": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.55),
    # Pointed ellipse (lens) on the diagonal.
    "leaf": lambda u, v: (((u + v) * 0.7071 - 0.5) ** 2 + ((v - u) * 0.7071) ** 2 <= 1.0)
                         & (((u + v) * 0.7071 + 0.5) ** 2 + ((v - u) * 0.7071) ** 2 <= 1.0),
}

_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.zeros(u.shape, bool),
    "checker": lambda u, v: (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0,
    "hstripes": lambda u, v: np.floor(v * 3.0) % 2 == 0,
    "vstripes": lambda u, v: np.floor(u * 3.5) % 2 == 0,
    "dstripes": lambda u, v: np.floor((u + v) * 2.5) % 2 == 0,
    "dots": lambda u, v: (np.mod(u * 2.5, 1.0) - 0.5) ** 2 + (np.mod(v * 2.5, 1.0) - 0.5) ** 2
                         <= 0.07,
}

# name -> (RGB colour, texture). The texture's "dark" cells use 0.5 x the colour.
CLASS_STYLE = {
    "ball": ((225, 30, 30), "solid"),
    "box": ((35, 70, 235), "checker"),
    "tent": ((20, 170, 50), "hstripes"),
    "star": ((250, 215, 20), "solid"),
    "ring": ((160, 40, 220), "solid"),
    "cross": ((255, 125, 0), "solid"),
    "moon": ((0, 205, 225), "solid"),
    "kite": ((255, 70, 170), "dstripes"),
    "drum": ((150, 75, 20), "vstripes"),
    "leaf": ((140, 235, 30), "dots"),
}



# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] bilinear (half-pixel centres, edge-clamped) interpolation weights."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  w = np.zeros((n_out, n_in), np.float32)
  w[np.arange(n_out), lo] += 1 - (pos - lo)
  w[np.arange(n_out), hi] += pos - lo
  return w


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = np.arange(size, dtype=np.float32) + 0.5
  return c[:, None], c[None, :]


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
  """A low-saturation colour: grey level plus a small tint."""
  return rng.uniform(50, 200) + rng.uniform(-25, 25, 3)


def _background(rng: np.random.Generator, w: world.WorldConfig) -> np.ndarray:
  """Smooth low-saturation colour field plus clutter lines and soft blobs; float32 [S, S, 3]."""
  s = w.image_size
  g = int(rng.integers(3, 7))
  field = (rng.uniform(70, 185) + rng.normal(0, 22, (g, g, 1))
           + rng.normal(0, 10, (g, g, 3))).astype(np.float32)
  m = _upsample_matrix(g, s)
  img = np.einsum("yg,ghc,xh->yxc", m, field, m, optimize=True)
  ys, xs = _pixel_grid(s)
  for _ in range(int(rng.integers(w.clutter_lines[0], w.clutter_lines[1] + 1))):
    p0, p1 = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
    half = rng.uniform(0.5, max(0.6, 0.025 * s))
    d = p1 - p0
    t = np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
    dist2 = (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2
    img[dist2 <= half * half] = _muted_colour(rng)
  for _ in range(int(rng.integers(w.clutter_blobs[0], w.clutter_blobs[1] + 1))):
    cx, cy = rng.uniform(0, s, 2)
    rx, ry = rng.uniform(0.06, 0.2, 2) * s
    alpha = rng.uniform(0.3, 0.6) * np.exp(-((xs - cx) / rx) ** 2 - ((ys - cy) / ry) ** 2)
    img += alpha[..., None] * (_muted_colour(rng).astype(np.float32) - img)
  return img


def _place(rng, n, radii, s, min_dist, max_tries=30):
  """Centres inside the image, pairwise >= min_dist * (r_i + r_j) apart (best effort)."""
  centres = np.zeros((n, 2))
  for i in range(n):
    for _ in range(max_tries):
      c = rng.uniform(radii[i], s - radii[i], 2)
      if i == 0 or np.all(np.hypot(*(centres[:i] - c).T) >= min_dist * (radii[:i] + radii[i])):
        break
    centres[i] = c
  return centres


def _object_masks(classes, centres, radii, angles, s):
  """Per object: (row slice, col slice, u, v, mask) in its bounding square."""
  out = []
  for cid, (cx, cy), r, a in zip(classes, centres, radii, angles):
    y0, y1 = max(0, int(cy - r)), min(s, int(np.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(cx - r)), min(s, int(np.ceil(cx + r)) + 1)
    yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / r
    xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / r
    ca, sa = np.cos(a), np.sin(a)
    u, v = ca * xx + sa * yy, ca * yy - sa * xx
    mask = _SHAPES[world.CLASS_NAMES[cid - 1]](u, v)
    out.append((slice(y0, y1), slice(x0, x1), u, v, mask))
  return out


def render_scene(rng: np.random.Generator, w: world.WorldConfig,
                 classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Draws objects of the given 1-based class ids (drawing order = occlusion order).

  Returns image uint8 [S, S, 3] and class map uint8 [S, S] (0 = background, else the class id
  of the visible object).
  """
  s = w.image_size
  n = len(classes)
  img = _background(rng, w)
  radii = rng.uniform(*w.object_scale, n) * s / 2
  angles = np.deg2rad(rng.uniform(-w.max_rotation_deg, w.max_rotation_deg, n))
  class_map = np.zeros((s, s), np.uint8)
  for attempt in range(12):
    if attempt < 11:
      centres = _place(rng, n, radii, s, w.min_center_distance)
    else:                                   # last resort: one object per grid cell, no overlap
      k = int(np.ceil(np.sqrt(n)))
      cell = s / k
      radii = np.minimum(radii, 0.45 * cell)
      slots = rng.permutation(k * k)[:n]
      centres = np.stack([(slots % k + 0.5) * cell, (slots // k + 0.5) * cell], 1)
    objs = _object_masks(classes, centres, radii, angles, s)
    class_map[:] = 0
    for cid, (ys, xs, _, _, mask) in zip(classes, objs):
      class_map[ys, xs][mask] = cid
    visible = np.bincount(class_map.ravel(), minlength=w.num_classes + 1)[classes]
    area = np.array([o[4].sum() for o in objs])
    if np.all(visible >= np.maximum(1, w.min_visible_fraction * area)):
      break
  for cid, (ys, xs, u, v, mask) in zip(classes, objs):
    colour, texture = CLASS_STYLE[world.CLASS_NAMES[cid - 1]]
    colour = np.asarray(colour, np.float32) + rng.uniform(-w.colour_jitter, w.colour_jitter, 3)
    dark = _TEXTURES[texture](u, v)
    patch = np.where(dark[..., None], 0.5 * colour, colour)
    sel = class_map[ys, xs] == cid
    img[ys, xs][sel] = patch[sel]
  if w.pixel_noise_std > 0:
    img += rng.standard_normal(img.shape, dtype=np.float32) * w.pixel_noise_std
  return np.clip(img, 0, 255).astype(np.uint8), class_map

