"""Tolerances for metrics that threshold or rank continuous values (tests only).

Two runs of the same evaluation (another device count, batch size or mesh, another CPU
type) compute the continuous quantities -- heat maps, score matrices, head scores -- in a
different order, so they agree only to a few units in the last place. A metric that
thresholds or ranks them (AP, best-threshold IoU, recall@k) is a step function of them: a
value that sits within that disagreement of a threshold, or of another value it is ranked
against, may land on either side, and the metric moves by a whole step. Comparing such a
metric at 1e-6 therefore tests the CPU, not the code.

This module turns "the continuous inputs agree within ``eps``" into the interval in which
the metric must then lie, by bounding what every comparison that ``eps`` can flip may do:

* :func:`segmentation_intervals` -- prompted segmentation (metrics.py): heat maps min-max
  normalised over the set (an input change of ``eps`` moves a normalised value by at most
  ``delta = 4 eps / (range - 2 eps)``, :func:`minmax_delta`), bilinearly resized (a convex
  combination: still ``delta``), pooled per class. The IoU thresholds (a linspace of the
  pool's min and max) also move by at most ``delta``, so a pixel's prediction can flip only
  if it lies within ``2 delta`` of a threshold; per threshold, the IoU lies between the one
  with every such positive off and every such negative on and the reverse. AP is
  ``mean_i #pos(>= s_i) / #all(>= s_i)`` over positives ``i`` (ties grouped); its bounds count
  as surely above ``s_i`` only what is more than ``2 delta`` above and as possibly above
  everything within ``2 delta``.
* :func:`retrieval_intervals` -- recall@k: the true item's rank counts the others scored
  ``>=`` it; scores within ``2 eps`` of it may count or not.
* :func:`disentanglement_intervals` -- AP of per-head min-max normalised scores as above; the
  activations are continuous and move by at most ``delta``.

:func:`assert_metrics_match` compares two metric dicts: the keys with an interval must lie
in it, the others agree within an absolute tolerance. ``eps`` comes from the continuous
tolerance the test asserts on the inputs themselves (:func:`assert_inputs_close`), so the
interval is as narrow as the inputs are close: where no value is near a threshold it is a
single point and the metric is compared exactly.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from denseav_jax.evals import metrics as metrics_lib

Interval = Tuple[float, float]

# Rounding of the normalisation and resize themselves (float32 values in [0, 1]): a few ulps.
FLOAT32_SLACK = 1e-6


def tolerance(x, rtol: float, atol: float = 0.0) -> float:
  """The absolute tolerance ``rtol * max|x| + atol`` for values ``x``."""
  x = np.asarray(x, np.float64)
  return float(rtol * (np.max(np.abs(x)) if x.size else 0.0) + atol)


def assert_inputs_close(got, want, eps: float, what: str = 'inputs') -> None:
  """The continuous inputs of a metric agree within ``eps`` (absolute), element-wise."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f'{what}: shape {got.shape} != {want.shape}'
  diff = float(np.max(np.abs(got - want))) if got.size else 0.0
  assert diff <= eps, f'{what}: max |difference| {diff:.3g} > {eps:.3g}'


def minmax_delta(eps: float, span: float, floor: float = 0.0) -> float:
  """How far ``(x - min x) / max(max x - min x, floor)`` can move when every ``x`` moves by
  at most ``eps``: ``4 eps / max(span - 2 eps, floor)`` (infinite if that is not positive)."""
  denom = max(span - 2.0 * eps, floor)
  return float('inf') if denom <= 0 else 4.0 * eps / denom


def ap_interval(scores, labels, delta: float) -> Interval:
  """Bounds of :func:`metrics.average_precision` over all scores within ``delta`` of
  ``scores`` (each moved independently)."""
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels, bool).reshape(-1)
  pos, neg = np.sort(s[y]), np.sort(s[~y])
  if pos.size == 0:
    return 0.0, 0.0
  if not np.isfinite(delta):
    return 0.0, 1.0
  gap = 2.0 * delta
  sp = s[y]

  def count_ge(sorted_vals, t):  # #{v >= t}
    return sorted_vals.size - np.searchsorted(sorted_vals, t, side='left')

  def count_gt(sorted_vals, t):  # #{v > t}
    return sorted_vals.size - np.searchsorted(sorted_vals, t, side='right')

  # Upper: every positive that may be >= s_i is, every negative that may be below is.
  a_hi = count_ge(pos, sp - gap)
  b_hi = count_gt(neg, sp + gap)
  # Lower: only positives surely above count (and i itself), every negative that may be
  # >= s_i is.
  a_lo = count_gt(pos, sp + gap) + 1
  b_lo = count_ge(neg, sp - gap)
  hi = float(np.mean(a_hi / (a_hi + b_hi)))
  lo = float(np.mean(a_lo / (a_lo + b_lo)))
  return max(lo, 0.0), min(hi, 1.0)


def iou_interval(scores, labels, delta: float, num_thresholds: int = 20) -> Interval:
  """Bounds of :func:`metrics.best_threshold_iou` over all scores within ``delta`` of
  ``scores``; the thresholds (a linspace of the min and max) then move by at most ``delta``.

  The end thresholds are the perturbed min and max themselves: at the max nothing is
  predicted (IoU 0); at the min everything is but the new min, one of the values within
  ``2 delta`` of the old one."""
  s = np.sort(np.asarray(scores, np.float64).reshape(-1))
  y = np.asarray(labels, bool).reshape(-1)
  pos = np.sort(np.asarray(scores, np.float64).reshape(-1)[y])
  neg = np.sort(np.asarray(scores, np.float64).reshape(-1)[~y])
  if pos.size == 0:
    return 0.0, 0.0
  if not np.isfinite(delta):
    return 0.0, 1.0
  gap = 2.0 * delta
  t = np.linspace(s[0], s[-1], int(num_thresholds))

  def count_gt(sorted_vals, th):
    return sorted_vals.size - np.searchsorted(sorted_vals, th, side='right')

  n_pos = pos.size
  inter_hi, union_hi = count_gt(pos, t - gap), n_pos + count_gt(neg, t + gap)
  inter_lo, union_lo = count_gt(pos, t + gap), n_pos + count_gt(neg, t - gap)
  # At the min, at least one value near it is not predicted: a negative if there is one
  # (best case), a positive if there is one (worst case).
  near_pos = n_pos - count_gt(pos, s[0] + gap)
  near_neg = neg.size - count_gt(neg, s[0] + gap)
  inter_hi[0] -= int(near_neg == 0)
  union_lo[0] -= int(near_pos == 0)
  hi = inter_hi / union_hi
  lo = inter_lo / union_lo
  if t.size > 1:  # At the max nothing is predicted.
    hi[-1] = lo[-1] = 0.0
  return max(float(lo.max()), 0.0), min(float(hi.max()), 1.0)


def _normalised(heatmaps) -> Tuple[np.ndarray, float]:
  """The metric's set-wide min-max normalisation (float32, as metrics.py) and the span."""
  hm = np.asarray(heatmaps, np.float32)
  lo, hi = float(hm.min()), float(hm.max())
  span = hi - lo
  out = (hm - np.float32(lo)) / np.float32(span) if span > 0 else np.zeros_like(hm)
  return out, span


def segmentation_intervals(heatmaps, gt_masks, prompt_classes, eps: float,
                           num_thresholds: int = 20, map_delta: float = 0.0,
                           per_class: bool = False) -> Dict[str, Interval]:
  """Intervals of ``ap`` and ``iou`` (means over prompt classes, as
  metrics.prompted_segmentation_per_class_from_masks reports them) for every set of heat
  maps within ``eps`` (absolute) of ``heatmaps`` [N, h, w]; ``gt_masks`` [N, S, S] bool.

  ``map_delta``: a further disagreement of the normalised, resized maps themselves (another
  resize implementation). ``per_class``: [C, 2] arrays (lo, hi) per sorted prompt class
  instead of the means."""
  gt_masks = np.asarray(gt_masks, bool)
  prompt_classes = np.asarray(prompt_classes)
  hm, span = _normalised(heatmaps)
  delta = minmax_delta(eps, span) + map_delta + FLOAT32_SLACK
  aps, ious = [], []
  for c in np.unique(prompt_classes):
    idx = np.flatnonzero(prompt_classes == c)
    pred = metrics_lib.bilinear_resize(hm[idx], gt_masks.shape[1:]).reshape(-1)
    gt = gt_masks[idx].reshape(-1)
    aps.append(ap_interval(pred, gt, delta))
    ious.append(iou_interval(pred, gt, delta, num_thresholds))
  if per_class:
    return {'ap': np.array(aps), 'iou': np.array(ious)}
  return {'ap': tuple(np.mean(aps, axis=0)), 'iou': tuple(np.mean(ious, axis=0))}


def retrieval_intervals(scores, eps: float, ks: Sequence[int] = (1, 5, 10)
                        ) -> Dict[str, Interval]:
  """Intervals of metrics.retrieval_metrics' recalls for every [N, N] score matrix within
  ``eps`` (absolute) of ``scores``; chance_r{k} are exact."""
  s = np.asarray(scores, np.float64)
  n = s.shape[0]
  off = ~np.eye(n, dtype=bool)
  gap = 2.0 * eps
  out = {}
  for name, m in (('a2i', s), ('i2a', s.T)):
    d = m - np.diagonal(m)[:, None]  # Another item's score minus the true item's.
    rank_lo = np.count_nonzero((d >= gap) & off, axis=1)  # Surely counted.
    rank_hi = np.count_nonzero((d >= -gap) & off, axis=1)  # Possibly counted.
    for k in ks:
      out[f'{name}_r{k}'] = (float(np.mean(rank_hi < k)), float(np.mean(rank_lo < k)))
  for k in ks:
    out[f'chance_r{k}'] = (min(k, n) / n,) * 2
  return out


def disentanglement_intervals(speech_scores, sound_scores, eps: float
                              ) -> Dict[str, Interval]:
  """Intervals of the disentangle evaluator's numbers (ap_dis, act_dis, ap_h{h}_{set},
  act_h{h}_{set}) for every pair of [N, 2] head-score arrays within ``eps`` of these."""
  a = np.asarray(speech_scores, np.float64)
  b = np.asarray(sound_scores, np.float64)
  s = np.concatenate([a, b])
  lo_s = s.min(axis=0)
  span = s.max(axis=0) - lo_s
  norm = (s - lo_s) / np.maximum(span, 1e-4)
  is_speech = np.concatenate([np.ones(len(a), bool), np.zeros(len(b), bool)])
  ap = np.zeros((2, 2, 2))  # [head, set, lo/hi]
  act = np.zeros((2, 2, 2))
  out = {}
  for h in range(2):
    delta = minmax_delta(eps, float(span[h]), 1e-4) + FLOAT32_SLACK
    for k, (kind, labels) in enumerate((('speech', is_speech), ('sound', ~is_speech))):
      ap[h, k] = ap_interval(norm[:, h], labels, delta)
      m = 1.0 - norm[labels, h].mean()
      act[h, k] = (m - delta, m + delta)
      out[f'ap_h{h}_{kind}'] = tuple(ap[h, k])
      out[f'act_h{h}_{kind}'] = tuple(act[h, k])
  for name, v in (('ap_dis', ap), ('act_dis', act)):  # Both monotone in each entry.
    out[name] = tuple(max(0.5 * (v[0, 0, j] + v[1, 1, j]), 0.5 * (v[0, 1, j] + v[1, 0, j]))
                      for j in range(2))
  return out


def assert_within(values, intervals, slack: float = 1e-9, what: str = 'values') -> None:
  """Each of ``values`` [...] lies in its interval ``intervals`` [..., 2] (lo, hi)."""
  v = np.asarray(values, np.float64)
  iv = np.asarray(intervals, np.float64)
  ok = (iv[..., 0] - slack <= v) & (v <= iv[..., 1] + slack)
  assert np.all(ok), f'{what} outside their intervals: {v[~ok]} not in {iv[~ok].tolist()}'


def assert_metrics_match(got: Mapping[str, float], want: Mapping[str, float],
                         intervals: Mapping[str, Interval] | None = None,
                         tol: float = 1e-6, slack: float = 1e-9) -> None:
  """The same keys; a key with an interval has both values in it (``slack`` for the float
  sums of a mean), every other key ``|got - want| <= tol``."""
  intervals = intervals or {}
  assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
  assert not set(intervals) - set(got), f'intervals for no metric: {set(intervals) - set(got)}'
  bad = {}
  for k in got:
    if k in intervals:
      lo, hi = intervals[k]
      if not all(lo - slack <= v <= hi + slack for v in (got[k], want[k])):
        bad[k] = (got[k], want[k], 'interval', (lo, hi))
    elif abs(got[k] - want[k]) > tol:
      bad[k] = (got[k], want[k], 'tol', tol)
  assert not bad, bad
