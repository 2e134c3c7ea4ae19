"""denseav_jax/testing/tolerance.py: every input within eps gives a metric inside the
interval (random and worst-case perturbations, ties included), and the interval is a single
point when no value is within eps of a threshold or of a value it is ranked against."""

import numpy as np

from denseav_jax.evals import metrics as metrics_lib
from denseav_jax.testing import tolerance


def _segmentation_set(rng, n=12, h=5, s=20, num_classes=3, levels=None):
  heat = rng.standard_normal((n, h, h))
  if levels:  # Coarse values: many exact ties, and many values a step apart.
    heat = np.round(heat * levels) / levels
  prompt = rng.integers(1, num_classes + 1, n)
  gt = rng.random((n, s, s)) < 0.3
  gt[:, 0, 0] = True
  return heat, gt, prompt


def _perturbations(rng, x, eps, count):
  """Random ones, all-corner ones and ones that snap values onto each other (ties)."""
  for i in range(count):
    if i % 3 == 0:
      yield x + rng.uniform(-eps, eps, x.shape)
    elif i % 3 == 1:
      yield x + eps * rng.choice([-1.0, 1.0], x.shape)
    else:
      yield x + np.clip(np.round(x / eps) * eps - x, -eps, eps)


def test_segmentation_metrics_stay_inside_their_intervals():
  rng = np.random.default_rng(0)
  moved = 0
  for levels in (None, 8):
    heat, gt, prompt = _segmentation_set(rng, levels=levels)
    base = metrics_lib.prompted_segmentation_per_class_from_masks(heat, gt, prompt)
    eps = tolerance.tolerance(heat, 1e-3)
    iv = tolerance.segmentation_intervals(heat, gt, prompt, eps, per_class=True)
    ivm = tolerance.segmentation_intervals(heat, gt, prompt, eps)
    for k in ('ap', 'iou'):
      tolerance.assert_within(base[k], iv[k])
      np.testing.assert_allclose(ivm[k], iv[k].mean(0))
    for p in _perturbations(rng, heat, eps, 30):
      got = metrics_lib.prompted_segmentation_per_class_from_masks(p, gt, prompt)
      for k in ('ap', 'iou'):
        tolerance.assert_within(got[k], iv[k], what=k)
        moved += int(np.any(got[k] != base[k]))
  assert moved > 10  # The perturbations do flip pixels: the check is not vacuous.


def test_segmentation_interval_is_a_point_far_from_thresholds():
  # Few pixels, maps at the label size (no resize, so no tied border pixels): no two
  # values within the float32 slack of each other or of a threshold.
  rng = np.random.default_rng(1)
  heat, gt, prompt = _segmentation_set(rng, n=4, h=8, s=8, num_classes=2)
  m = metrics_lib.prompted_segmentation_metrics(heat, np.where(gt, prompt[:, None, None], 0),
                                                prompt)
  iv = tolerance.segmentation_intervals(heat, gt, prompt, 1e-12)
  for k in ('ap', 'iou'):
    tolerance.assert_within(m[k], iv[k])
    assert iv[k][1] - iv[k][0] < 1e-12
  wide = tolerance.segmentation_intervals(heat, gt, prompt, tolerance.tolerance(heat, 1e-2))
  assert wide['ap'][1] - wide['ap'][0] > 1e-3


def test_retrieval_recalls_stay_inside_their_intervals():
  rng = np.random.default_rng(2)
  s = np.round(rng.standard_normal((30, 30)) * 4) / 4 + 2.0 * np.eye(30)  # Near ties.
  eps = 0.05
  iv = tolerance.retrieval_intervals(s, eps)
  base = metrics_lib.retrieval_metrics(s)
  tolerance.assert_metrics_match(base, base, iv)
  moved = 0
  for p in _perturbations(rng, s, eps, 60):
    got = metrics_lib.retrieval_metrics(p)
    tolerance.assert_metrics_match(got, base, iv)
    moved += int(got != base)
  assert moved > 5
  point = tolerance.retrieval_intervals(rng.standard_normal((30, 30)), 1e-12)
  assert all(hi == lo for lo, hi in point.values())


def test_disentanglement_stays_inside_its_intervals():
  rng = np.random.default_rng(3)
  speech = rng.standard_normal((40, 2)) * [1.0, 3.0] + [0.8, -1.0]
  sound = rng.standard_normal((30, 2)) * [1.0, 3.0] + [0.0, 1.5]
  eps = 0.02
  iv = tolerance.disentanglement_intervals(speech, sound, eps)

  def numbers(a, b):
    d = metrics_lib.disentanglement_metrics(a, b)
    out = {'ap_dis': d['ap_dis'], 'act_dis': d['act_dis']}
    for h in range(2):
      for j, kind in enumerate(('speech', 'sound')):
        out[f'ap_h{h}_{kind}'], out[f'act_h{h}_{kind}'] = d['ap'][h, j], d['act'][h, j]
    return out

  base = numbers(speech, sound)
  moved = 0
  for ps, pn in zip(_perturbations(rng, speech, eps, 30), _perturbations(rng, sound, eps, 30)):
    got = numbers(ps, pn)
    tolerance.assert_metrics_match(got, base, iv)
    moved += int(got['ap_dis'] != base['ap_dis'])
  assert moved > 5
