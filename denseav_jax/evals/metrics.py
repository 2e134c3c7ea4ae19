"""Evaluation metrics for DenseAV (pure numpy; the protocol: docs/evaluation.md).

Public API
----------
- :func:`bilinear_resize` -- torch ``F.interpolate(mode="bilinear", align_corners=False)``
  semantics (half-pixel centres, no anti-aliasing) for ``[..., h, w]`` arrays.
- :func:`average_precision` -- step-wise AP, ``sum_n (R_n - R_{n-1}) P_n`` with tied scores
  grouped into one threshold (the definition used by sklearn's ``average_precision_score`` and
  torchmetrics' ``binary_average_precision``, which the release calls).
- :func:`best_threshold_iou` -- best IoU over ``num_thresholds`` thresholds
  ``linspace(min(scores), max(scores), num_thresholds)``, prediction ``scores > threshold``
  (strict), a threshold whose union is empty scoring 0.
- :func:`prompted_segmentation_per_class` / :func:`prompted_segmentation_metrics` -- the
  ADE20K speech/sound-prompted segmentation protocol (mean AP / mean best-threshold IoU over
  prompt classes).
- :func:`retrieval_metrics` -- cross-modal recall@k in both directions.

Every reported metric is a Python ``float`` in ``[0, 1]``.

How this follows the release (``mhamilton723/DenseAV``)
-----------------------------------------------------
- ``denseav/eval_utils.py::prep_heatmap``: heat maps of the *whole evaluated set* are shifted by
  their global minimum and divided by the resulting global maximum, then resized with
  ``F.interpolate(..., mode="bilinear")`` (``align_corners=False``) to the label-map size.
  (A constant set would divide by zero there; here it maps to all zeros.)
- ``denseav/eval_utils.py::get_paired_heatmaps``: per unique prompt class, the heat maps and
  ground-truth masks (``semseg == prompt_class``) of that class's examples are flattened
  together; AP via ``binary_average_precision`` and IoU via ``multi_iou``; the reported number
  is the mean of the per-class values.
- ``denseav/eval_utils.py::multi_iou``: ``thresholds = linspace(pred.min(), pred.max(), k)``
  with ``k = 20`` over the *class's pooled* predictions; ``hard = pred > threshold``; a zero
  union is replaced by 1 (so that threshold's IoU is 0); the best IoU is reported.
- ``denseav/train.py::_calc_recalls``: the score matrix is ``sim[audio, image]``;
  ``topk`` along dim 1 (images, per audio row) gives the release's ``I_r{k}`` = our
  ``a2i_r{k}``; ``topk`` along dim 0 (audios, per image column) gives the release's ``A_r{k}`` =
  our ``i2a_r{k}``.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = [
    "bilinear_resize",
    "average_precision",
    "best_threshold_iou",
    "prompted_segmentation_per_class",
    "prompted_segmentation_metrics",
    "retrieval_metrics",
    "advanced_windows",
    "prompted_segmentation_per_class_from_masks",
    "disentanglement_metrics",
]


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------
def _linear_weights(in_size: int, out_size: int):
    """Source indices and weights for 1-D linear interpolation with half-pixel centres.

    Matches torch's ``area_pixel_compute_source_index`` for ``align_corners=False`` when an
    output *size* is given: ``src = (dst + 0.5) * in / out - 0.5``, clamped below at 0.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    w0 = 1.0 - w1
    return i0, i1, w0, w1


def bilinear_resize(x: np.ndarray, size) -> np.ndarray:
    """Bilinearly resize the last two axes of ``x`` to ``size = (H, W)``.

    Same result as ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=False)`` (half-pixel centres, edge clamping, no anti-aliasing when
    shrinking). Works separably, so memory is ``O(prod(leading) * h * W + ... * H * W)``.
    Returns float32 for float32 input, float64 otherwise.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims [..., h, w], got shape {x.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    x = x.astype(dtype, copy=False)
    in_h, in_w = x.shape[-2], x.shape[-1]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"x has an empty spatial axis: shape {x.shape}")

    # Along width.
    if in_w != out_w:
        i0, i1, w0, w1 = _linear_weights(in_w, out_w)
        x = x[..., i0] * w0.astype(dtype) + x[..., i1] * w1.astype(dtype)
    # Along height.
    if in_h != out_h:
        i0, i1, w0, w1 = _linear_weights(in_h, out_h)
        x = (x[..., i0, :] * w0.astype(dtype)[:, None]
             + x[..., i1, :] * w1.astype(dtype)[:, None])
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------------------------
# Binary ranking metrics
# --------------------------------------------------------------------------------------------
def _check_scores_labels(scores, labels):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have the same shape, got scores {scores.shape} "
            f"and labels {labels.shape}")
    if scores.size == 0:
        raise ValueError("scores is empty")
    scores = scores.reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contains NaN or infinite values")
    labels = labels.reshape(-1)
    if labels.dtype != np.bool_:
        uniq = np.unique(labels)
        if not np.all(np.isin(uniq, (0, 1))):
            raise ValueError(f"labels must be binary (0/1 or bool), got values {uniq[:10]}")
        labels = labels.astype(bool)
    return scores, labels


def _ap_from_sorted(sorted_desc: np.ndarray, labels_sorted: np.ndarray) -> float:
    """AP given scores sorted in descending order and the labels in the same order."""
    n_pos = int(np.count_nonzero(labels_sorted))
    if n_pos == 0:
        return 0.0
    # Last index of each group of equal scores = one threshold.
    ends = np.flatnonzero(np.diff(sorted_desc)) if sorted_desc.size > 1 else np.empty(0, np.int64)
    ends = np.append(ends, sorted_desc.size - 1)
    tp = np.cumsum(labels_sorted, dtype=np.int64)[ends]
    precision = tp / (ends + 1.0)
    recall = tp / float(n_pos)
    d_recall = np.diff(recall, prepend=0.0)
    ap = float(np.sum(d_recall * precision))
    return min(max(ap, 0.0), 1.0)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step-wise average precision ``sum_n (R_n - R_{n-1}) P_n``.

    Thresholds are the distinct score values, so tied scores are one operating point (same as
    sklearn's ``average_precision_score`` / torchmetrics' ``binary_average_precision``).
    Inputs of any (equal) shape are flattened. If there are no positive labels, AP is defined
    as 0.0 (sklearn's convention; torchmetrics would give NaN).
    """
    scores, labels = _check_scores_labels(scores, labels)
    order = np.argsort(-scores, kind="stable")
    return _ap_from_sorted(scores[order], labels[order])


def _iou_from_sorted(sorted_asc: np.ndarray, pos_sorted_asc: np.ndarray,
                     num_thresholds: int) -> float:
    n = sorted_asc.size
    n_pos = pos_sorted_asc.size
    lo, hi = float(sorted_asc[0]), float(sorted_asc[-1])
    thresholds = np.linspace(lo, hi, num_thresholds)
    # Number predicted positive (score > t) overall and among true positives.
    n_pred = n - np.searchsorted(sorted_asc, thresholds, side="right")
    inter = n_pos - np.searchsorted(pos_sorted_asc, thresholds, side="right")
    union = n_pos + n_pred - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float(min(max(iou.max(), 0.0), 1.0))


def best_threshold_iou(scores: np.ndarray, labels: np.ndarray, num_thresholds: int = 20) -> float:
    """Best IoU of ``scores > t`` against ``labels`` over ``t`` in
    ``linspace(scores.min(), scores.max(), num_thresholds)``.

    Prediction is strictly greater than the threshold (as in the release's ``multi_iou``); a
    threshold with an empty union counts as IoU 0. Inputs are flattened.
    """
    if int(num_thresholds) < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    scores, labels = _check_scores_labels(scores, labels)
    sorted_asc = np.sort(scores)
    pos_sorted = np.sort(scores[labels])
    return _iou_from_sorted(sorted_asc, pos_sorted, int(num_thresholds))


# --------------------------------------------------------------------------------------------
# Prompted semantic segmentation
# --------------------------------------------------------------------------------------------
def _minmax_normalise(heatmaps: np.ndarray) -> np.ndarray:
    """Global min-max normalisation over the whole set (float32 output)."""
    hm = heatmaps.astype(np.float32, copy=True)
    lo = hm.min()
    hm -= lo
    hi = hm.max()
    if hi > 0:
        hm /= hi
    else:  # constant set: release would produce NaN; we use zeros.
        hm[...] = 0.0
    return hm


def _check_segmentation_inputs(heatmaps, gt_masks, prompt_classes, num_thresholds):
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be [N, h, w], got shape {heatmaps.shape}")
    if gt_masks.ndim != 3:
        raise ValueError(f"class_maps must be [N, S, S], got shape {gt_masks.shape}")
    if prompt_classes.ndim != 1:
        raise ValueError(f"prompt_classes must be [N], got shape {prompt_classes.shape}")
    n = heatmaps.shape[0]
    if n == 0:
        raise ValueError("heatmaps is empty (N = 0)")
    if gt_masks.shape[0] != n:
        raise ValueError(
            f"class_maps has N={gt_masks.shape[0]} but heatmaps has N={n}")
    if prompt_classes.shape[0] != n:
        raise ValueError(
            f"prompt_classes has N={prompt_classes.shape[0]} but heatmaps has N={n}")
    if not np.issubdtype(prompt_classes.dtype, np.integer):
        raise ValueError(f"prompt_classes must be integer, got dtype {prompt_classes.dtype}")
    if not np.all(np.isfinite(heatmaps)):
        raise ValueError("heatmaps contains NaN or infinite values")
    if int(num_thresholds) < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")


def prompted_segmentation_per_class(heatmaps: np.ndarray, class_maps: np.ndarray,
                                    prompt_classes: np.ndarray,
                                    num_thresholds: int = 20) -> Dict[str, np.ndarray]:
    """Per-class prompted-segmentation metrics.

    Args:
      heatmaps: ``[N, h, w]`` float heat maps (any range; min-max normalised over all N here).
      class_maps: ``[N, Hl, Wl]`` integer label maps (``S x S`` in the usual setup).
      prompt_classes: ``[N]`` integer class prompted in each example.
      num_thresholds: number of IoU thresholds (20 in the release).

    Returns:
      dict with ``classes`` ([C] int, sorted unique prompt classes), ``ap``, ``iou``,
      ``chance_ap`` ([C] float64 each) and ``num_examples``, ``num_pixels``, ``num_positive``
      ([C] int64 each). A class whose pooled ground truth has no positive pixel gets AP 0,
      IoU 0 and chance AP 0.
    """
    heatmaps = np.asarray(heatmaps)
    class_maps = np.asarray(class_maps)
    prompt_classes = np.asarray(prompt_classes)
    _check_segmentation_inputs(heatmaps, class_maps, prompt_classes, num_thresholds)
    if not np.issubdtype(class_maps.dtype, np.integer):
        raise ValueError(f"class_maps must be integer, got dtype {class_maps.dtype}")
    gt = class_maps == prompt_classes[:, None, None]
    return prompted_segmentation_per_class_from_masks(heatmaps, gt, prompt_classes,
                                                      num_thresholds)


def prompted_segmentation_per_class_from_masks(heatmaps: np.ndarray, gt_masks: np.ndarray,
                                               prompt_classes: np.ndarray,
                                               num_thresholds: int = 20
                                               ) -> Dict[str, np.ndarray]:
    """As :func:`prompted_segmentation_per_class`, from the ground truth
    ``gt_masks[i] = (class_map[i] == prompt_classes[i])`` (``[N, S, S]`` bool): the form the
    sharded evaluators gather (bit-packed), since it needs no label map on the host."""
    heatmaps = np.asarray(heatmaps)
    gt_masks = np.asarray(gt_masks)
    prompt_classes = np.asarray(prompt_classes)
    _check_segmentation_inputs(heatmaps, gt_masks, prompt_classes, num_thresholds)
    out_hw = gt_masks.shape[1:]
    hm = _minmax_normalise(heatmaps)  # low-res, cheap

    classes = np.unique(prompt_classes)
    res = {k: np.zeros(len(classes), np.float64) for k in ("ap", "iou", "chance_ap")}
    for k in ("num_examples", "num_pixels", "num_positive"):
        res[k] = np.zeros(len(classes), np.int64)
    for ci, c in enumerate(classes):
        idx = np.flatnonzero(prompt_classes == c)
        # Resize only this class's examples; pooled flat vectors.
        pred = bilinear_resize(hm[idx], out_hw).reshape(-1)
        gt = gt_masks[idx].astype(bool, copy=False).reshape(-1)
        n_pos = int(np.count_nonzero(gt))
        res["num_examples"][ci] = idx.size
        res["num_pixels"][ci] = gt.size
        res["num_positive"][ci] = n_pos
        res["chance_ap"][ci] = n_pos / gt.size
        order = np.argsort(pred, kind="stable")  # ascending
        sorted_asc = pred[order]
        gt_sorted_asc = gt[order]
        del order
        res["ap"][ci] = _ap_from_sorted(sorted_asc[::-1], gt_sorted_asc[::-1])
        # Positive scores in ascending order (a subsequence of the sorted array).
        pos_sorted = sorted_asc[gt_sorted_asc]
        res["iou"][ci] = _iou_from_sorted(sorted_asc, pos_sorted, int(num_thresholds)) \
            if n_pos > 0 else 0.0
    res["classes"] = classes
    return res


def advanced_windows(start_s, end_s, clip_seconds: float, num_steps: int,
                     margin_s: float = 0.2) -> np.ndarray:
    """[N] prompt-word timings (seconds) -> [N, T] bool windows for the 'advanced' heat map.

    The timing is widened by ``margin_s`` on both sides, expressed as a fraction of the
    padded clip (``clip_seconds``) and scaled to ``num_steps``; the start is floored and the
    end ceiled, and the window holds the steps ``[start, end)`` (the release's
    ``get_paired_heatmaps``). Two cases the release does not survive get a defined answer: a
    bound outside the clip is clipped to ``[0, T]`` (the release's one-hot would raise) and an
    empty window keeps one step (the release would divide by zero).
    """
    start_s = np.asarray(start_s, np.float64).reshape(-1)
    end_s = np.asarray(end_s, np.float64).reshape(-1)
    if start_s.shape != end_s.shape:
        raise ValueError(f"start_s {start_s.shape} and end_s {end_s.shape} differ")
    if clip_seconds <= 0 or num_steps < 1:
        raise ValueError(f"clip_seconds={clip_seconds} and num_steps={num_steps} must be "
                         "positive")
    lo = np.floor((start_s - margin_s) / clip_seconds * num_steps)
    hi = np.ceil((end_s + margin_s) / clip_seconds * num_steps)
    lo = np.clip(lo, 0, num_steps - 1).astype(np.int64)
    hi = np.clip(hi, 0, num_steps).astype(np.int64)
    hi = np.maximum(hi, lo + 1)
    t = np.arange(num_steps)[None]
    return (t >= lo[:, None]) & (t < hi[:, None])


def prompted_segmentation_metrics(heatmaps: np.ndarray, class_maps: np.ndarray,
                                  prompt_classes: np.ndarray,
                                  num_thresholds: int = 20) -> Dict[str, float]:
    """Mean-over-classes prompted-segmentation metrics (docs/evaluation.md#prompted-segmentation).

    Heat maps are min-max normalised over the whole set, bilinearly resized (half-pixel
    centres) to the label-map size, and compared with ``class_map == prompt_class``. For each
    unique prompt class, the pixels of all its examples are pooled; AP
    (:func:`average_precision`) and best-threshold IoU (:func:`best_threshold_iou`) are computed
    on the pool; the results are averaged over classes. ``chance_ap`` is the mean over the same
    classes of the pooled positive-pixel fraction (the expected AP of an uninformative ranking).

    Returns ``{"ap": float, "iou": float, "chance_ap": float}``.
    """
    pc = prompted_segmentation_per_class(heatmaps, class_maps, prompt_classes, num_thresholds)
    return {
        "ap": float(np.mean(pc["ap"])),
        "iou": float(np.mean(pc["iou"])),
        "chance_ap": float(np.mean(pc["chance_ap"])),
    }


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------
def _pessimistic_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of the diagonal item in each row, ties counted against it.

    rank[i] = #{j : s[i, j] > s[i, i]} + #{j != i : s[i, j] == s[i, i]}
            = #{j != i : s[i, j] >= s[i, i]}
    """
    diag = np.diagonal(scores)[:, None]
    return np.count_nonzero(scores >= diag, axis=1) - 1


def retrieval_metrics(scores: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Cross-modal retrieval recall@k in both directions.

    Args:
      scores: ``[N, N]`` with ``scores[a, v]`` the score of audio ``a`` with image ``v``; the
        matched pairs are on the diagonal.
      ks: cut-offs.

    Returns:
      ``a2i_r{k}``: fraction of audio rows whose true image is among the top-k images of the
      row (the release's ``I_r{k}``); ``i2a_r{k}``: fraction of image columns whose true audio is
      among the top-k audios of the column (the release's ``A_r{k}``); ``chance_r{k}`` =
      ``min(k, N) / N``.

    Ties are handled pessimistically and deterministically: the true item's rank is the number
    of *other* items whose score is ``>=`` its own, and it is a hit at k iff that rank is < k.
    (The release uses ``torch.topk``, whose order among ties is unspecified; the two agree
    whenever there are no ties.)
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [N, N] matrix, got shape {scores.shape}")
    n = scores.shape[0]
    if n == 0:
        raise ValueError("scores is empty (N = 0)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contains NaN or infinite values")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    scores = scores.astype(np.float64, copy=False)
    a2i_rank = _pessimistic_ranks(scores)      # per audio row, rank among images
    i2a_rank = _pessimistic_ranks(scores.T)    # per image column, rank among audios
    out: Dict[str, float] = {}
    for k in ks:
        out[f"a2i_r{k}"] = float(np.mean(a2i_rank < k))
    for k in ks:
        out[f"i2a_r{k}"] = float(np.mean(i2a_rank < k))
    for k in ks:
        out[f"chance_r{k}"] = float(min(k, n) / n)
    return out


# --------------------------------------------------------------------------------------------
# Disentanglement (two-head models)
# --------------------------------------------------------------------------------------------
def disentanglement_metrics(speech_scores: np.ndarray, sound_scores: np.ndarray
                            ) -> Dict[str, object]:
    """How well two heads separate speech pairs from sound pairs (the release's
    ``disentangle_validation``; docs/evaluation.md#disentanglement).

    Args:
      speech_scores: ``[N1, 2]`` matched-pair score of each head on the speech pairs.
      sound_scores: ``[N2, 2]`` the same on the sound pairs.

    Each head's scores are min-max normalised over both sets together (the divisor floored
    at 1e-4). ``ap[h, s]`` is the AP of head ``h``'s normalised score at telling set ``s``'s
    pairs (0 speech, 1 sound) from the other set's; ``act[h, s]`` is 1 - the mean normalised
    score of head ``h`` on set ``s``. ``ap_dis = max(mean(ap[0,0], ap[1,1]),
    mean(ap[0,1], ap[1,0]))`` (whichever assignment of heads to sets fits), ``act_dis`` the
    same from ``act``.

    Returns ``{"ap_dis", "act_dis"}`` as floats and ``{"ap", "act"}`` as ``[2, 2]`` arrays.
    """
    a = np.asarray(speech_scores, np.float64)
    b = np.asarray(sound_scores, np.float64)
    for name, x in (("speech_scores", a), ("sound_scores", b)):
        if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be [N, 2] (two heads) with N >= 1, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or infinite values")
    s = np.concatenate([a, b])
    s = s - s.min(axis=0, keepdims=True)
    s = s / np.maximum(s.max(axis=0, keepdims=True), 1e-4)
    is_speech = np.concatenate([np.ones(len(a), bool), np.zeros(len(b), bool)])
    ap = np.zeros((2, 2))
    act = np.zeros((2, 2))
    for h in range(2):
        for k, labels in enumerate((is_speech, ~is_speech)):
            ap[h, k] = average_precision(s[:, h], labels)
            act[h, k] = 1.0 - s[labels, h].mean()
    return {
        "ap_dis": float(max(0.5 * (ap[0, 0] + ap[1, 1]), 0.5 * (ap[0, 1] + ap[1, 0]))),
        "act_dis": float(max(0.5 * (act[0, 0] + act[1, 1]), 0.5 * (act[0, 1] + act[1, 0]))),
        "ap": ap,
        "act": act,
    }
