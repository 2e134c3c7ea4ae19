"""Tests for denseav_jax.evals.metrics and denseav_jax.evals.figures (fast, CPU only)."""

import io

import numpy as np
import pytest

from denseav_jax.evals.metrics import (
    average_precision,
    best_threshold_iou,
    bilinear_resize,
    prompted_segmentation_metrics,
    prompted_segmentation_per_class,
    retrieval_metrics,
)


# ------------------------------------------------------------------------------------------
# average_precision
# ------------------------------------------------------------------------------------------
def _brute_force_ap(scores, labels):
    """sum over distinct thresholds t (descending) of (R(t) - R(prev)) * P(t)."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = labels.sum()
    ap, prev_r = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        p, r = tp / pred.sum(), tp / n_pos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_ap_perfect_ranking():
    assert average_precision(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0])) == 1.0


def test_ap_hand_worked():
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    assert isinstance(ap, float)


def test_ap_ties_grouped():
    # Tied 0.5 pair is one operating point: P=2/3 at R=1 regardless of order within the tie.
    expected = 0.5 * 1.0 + 0.5 * (2 / 3)
    assert average_precision([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(expected)
    assert average_precision([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(expected)
    # All tied: AP = positive fraction.
    assert average_precision(np.ones(4), [1, 0, 0, 1]) == pytest.approx(0.5)


def test_ap_matches_brute_force_with_ties_and_no_positives():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = np.round(rng.random(200), 1)  # many ties
        y = rng.random(200) < 0.3
        assert average_precision(s, y) == pytest.approx(_brute_force_ap(s, y))
    assert average_precision([0.3, 0.2], [0, 0]) == 0.0


def test_ap_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        average_precision(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="binary"):
        average_precision(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0.0, np.nan]), np.array([0, 1]))


# ------------------------------------------------------------------------------------------
# best_threshold_iou
# ------------------------------------------------------------------------------------------
def test_iou_hand_worked():
    # thresholds 0, .25, .5, .75, 1 ; pred = s > t
    # t=0: {.25,.5,.75,1} I=2 U=4 -> .5 ; t=.25: {.5,.75,1} I=2 U=3 -> 2/3 ; t=.5: 1/3 ; 0 ; 0
    s = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    y = np.array([0, 0, 1, 1, 0])
    assert best_threshold_iou(s, y, num_thresholds=5) == pytest.approx(2 / 3)


def test_iou_strict_threshold_and_perfect():
    # '>' never selects the minimum, so positives sitting at the minimum are unreachable.
    assert best_threshold_iou([0.0, 0.0, 1.0], [1, 1, 0]) == 0.0
    assert best_threshold_iou([0.0, 0.2, 0.9, 1.0], [0, 0, 1, 1]) == 1.0
    # Empty union everywhere -> 0.
    assert best_threshold_iou([0.5, 0.5], [0, 0]) == 0.0


# ------------------------------------------------------------------------------------------
# bilinear_resize
# ------------------------------------------------------------------------------------------
def test_bilinear_resize_2x2_to_4x4_half_pixel():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    expected = np.array([
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ])
    np.testing.assert_allclose(bilinear_resize(x, (4, 4)), expected)
    # Batched and float32 preserved.
    out = bilinear_resize(np.stack([x, x]).astype(np.float32), (4, 4))
    assert out.dtype == np.float32 and out.shape == (2, 4, 4)


def test_bilinear_resize_downsample_and_non_multiple():
    np.testing.assert_allclose(bilinear_resize(np.array([[0.0, 1, 2, 3]]), (1, 2)), [[0.5, 2.5]])
    # 3 -> 2: src = 0.25, 1.75
    np.testing.assert_allclose(bilinear_resize(np.array([[0.0, 4, 8]]), (1, 2)), [[1.0, 7.0]])
    # identity
    z = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(bilinear_resize(z, (3, 4)), z)


# ------------------------------------------------------------------------------------------
# prompted segmentation
# ------------------------------------------------------------------------------------------
def _toy_class_maps():
    cm = np.zeros((3, 4, 4), np.int64)
    cm[0, :2, :] = 1     # class 1 in top half
    cm[1, :, :1] = 1     # class 1 in first column
    cm[1, 3, 3] = 2      # class 2 present but not prompted here
    cm[2, 1:3, 1:3] = 2  # class 2 in the centre
    prompts = np.array([1, 1, 2])
    return cm, prompts


def test_prompted_perfect_heatmaps():
    cm, prompts = _toy_class_maps()
    hm = (cm == prompts[:, None, None]).astype(np.float32) * 5.0 - 2.0  # any affine map
    m = prompted_segmentation_metrics(hm, cm, prompts)
    assert m["ap"] == pytest.approx(1.0)
    assert m["iou"] == pytest.approx(1.0)
    # class 1 pooled: (8 + 4) / 32 ; class 2: 4 / 16
    assert m["chance_ap"] == pytest.approx(0.5 * (12 / 32 + 4 / 16))
    assert all(isinstance(v, float) for v in m.values())
    assert set(m) == {"ap", "iou", "chance_ap"}


def test_prompted_known_values_with_global_normalisation():
    # Example 0 (class 1): raw [[4,3],[2,1]] -> normalised (global min 1, max 4)
    #   [[1, 2/3], [1/3, 0]], gt [[1,0],[1,0]] -> AP = (1 + 2/3)/2, best IoU = 2/3, chance 1/2
    # Example 1 (class 2): raw [[1,1],[1,4]] -> [[0,0],[0,1]], gt [[0,0],[0,1]] -> AP 1, IoU 1
    hm = np.array([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 4.0]]])
    cm = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 2]]])
    prompts = np.array([1, 2])
    m = prompted_segmentation_metrics(hm, cm, prompts)
    assert m["ap"] == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert m["iou"] == pytest.approx(0.5 * (2 / 3 + 1.0))
    assert m["chance_ap"] == pytest.approx(0.5 * (0.5 + 0.25))
    pc = prompted_segmentation_per_class(hm, cm, prompts)
    np.testing.assert_array_equal(pc["classes"], [1, 2])
    np.testing.assert_allclose(pc["ap"], [5 / 6, 1.0])


def test_prompted_resizes_low_res_heatmaps():
    # 2x2 heat map [[1,0],[0,0]] upsampled to 4x4: top-left quadrant >= .5625, rest <= .25.
    hm = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    cm = np.zeros((1, 4, 4), np.int64)
    cm[0, :2, :2] = 7
    m = prompted_segmentation_metrics(hm, cm, np.array([7]))
    assert m["ap"] == pytest.approx(1.0) and m["iou"] == pytest.approx(1.0)
    assert m["chance_ap"] == pytest.approx(0.25)


def test_prompted_pooling_matches_direct_computation():
    rng = np.random.default_rng(1)
    hm = rng.random((6, 3, 5))
    cm = rng.integers(0, 3, size=(6, 7, 7))
    prompts = np.array([1, 2, 1, 1, 2, 2])
    pc = prompted_segmentation_per_class(hm, cm, prompts)
    norm = (hm - hm.min()) / (hm.max() - hm.min())
    up = bilinear_resize(norm, (7, 7))
    for ci, c in enumerate([1, 2]):
        idx = prompts == c
        s, y = up[idx].ravel(), (cm[idx] == c).ravel()
        assert pc["ap"][ci] == pytest.approx(_brute_force_ap(s, y))
        assert pc["iou"][ci] == pytest.approx(best_threshold_iou(s, y))
        assert pc["chance_ap"][ci] == pytest.approx(y.mean())


def test_prompted_bad_shapes():
    cm, prompts = _toy_class_maps()
    hm = np.zeros((3, 2, 2))
    with pytest.raises(ValueError, match="class_maps"):
        prompted_segmentation_metrics(hm, cm[:2], prompts)
    with pytest.raises(ValueError, match="prompt_classes"):
        prompted_segmentation_metrics(hm, cm, prompts[:2])
    with pytest.raises(ValueError, match="heatmaps"):
        prompted_segmentation_metrics(hm[:, 0], cm, prompts)


# ------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------
# scores[a, v]; true pairs on the diagonal.
#   a2i ranks (per row):    a0 0, a1 1, a2 2, a3 3
#   i2a ranks (per column): v0 1, v1 1, v2 0, v3 2 (tie .1 vs .1 counted against the truth)
_S = np.array([
    [0.90, 0.1, 0.2, 0.3],
    [0.80, 0.5, 0.1, 0.0],
    [0.70, 0.6, 0.4, 0.1],
    [0.95, 0.2, 0.3, 0.1],
])


def test_retrieval_hand_made_both_directions():
    m = retrieval_metrics(_S, ks=(1, 2, 3))
    assert m["a2i_r1"] == pytest.approx(0.25)
    assert m["a2i_r2"] == pytest.approx(0.50)
    assert m["a2i_r3"] == pytest.approx(0.75)
    assert m["i2a_r1"] == pytest.approx(0.25)
    assert m["i2a_r2"] == pytest.approx(0.75)
    assert m["i2a_r3"] == pytest.approx(1.00)
    assert m["chance_r2"] == pytest.approx(0.5)
    # Transposing the matrix swaps the directions.
    mt = retrieval_metrics(_S.T, ks=(1, 2, 3))
    for k in (1, 2, 3):
        assert mt[f"a2i_r{k}"] == m[f"i2a_r{k}"] and mt[f"i2a_r{k}"] == m[f"a2i_r{k}"]


def test_retrieval_default_keys_and_chance():
    m = retrieval_metrics(_S)
    assert set(m) == {f"{p}_r{k}" for p in ("a2i", "i2a", "chance") for k in (1, 5, 10)}
    assert m["chance_r1"] == pytest.approx(0.25) and m["chance_r10"] == 1.0
    assert m["a2i_r5"] == 1.0 and m["i2a_r10"] == 1.0
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m.values())
    # Fully tied matrix: pessimistic -> nothing is a hit at k=1.
    assert retrieval_metrics(np.ones((3, 3)), ks=(1,))["a2i_r1"] == 0.0
    assert retrieval_metrics(np.eye(3), ks=(1,))["i2a_r1"] == 1.0


def test_retrieval_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="scores"):
        retrieval_metrics(np.zeros(3))


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------
def _check_png(path_or_bytes, shape):
    from PIL import Image

    img = Image.open(path_or_bytes if isinstance(path_or_bytes, str) else io.BytesIO(path_or_bytes))
    img.load()
    assert img.format == "PNG"
    assert img.size == (shape[1], shape[0])


def test_figures_overlay_grid_and_png(tmp_path):
    from denseav_jax.evals.figures import overlay_grid, save_png, to_png_bytes

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    gt = rng.random((3, 16, 16)) > 0.5
    for k in (1, 2):
        arr = overlay_grid(images, rng.random((3, k, 4, 4)), rng.random((3, 4, 4)), gt,
                           ["dog", "cat", "car"], [f"head {i}" for i in range(k)], dpi=40)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3
        assert arr.shape[0] > 10 and arr.shape[1] > 10
    path = save_png(arr, str(tmp_path / "sub" / "grid.png"))
    _check_png(path, arr.shape)
    data = to_png_bytes(arr)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    _check_png(data, arr.shape)
    with pytest.raises(ValueError, match="do not fit"):
        overlay_grid(images, rng.random((3, 1, 4, 4)), rng.random((3, 5, 4)), gt, "abc", ["h"])


def test_figures_activation_with_audio_and_spectrogram():
    from denseav_jax.evals.figures import activation_with_audio, log_spectrogram

    rng = np.random.default_rng(0)
    sr = 8000
    wave = np.zeros((2, sr * 2), np.float32)
    wave[0, :sr] = np.sin(2 * np.pi * 1000 * np.arange(sr) / sr)  # 1 kHz for 1 s, then silence
    spec = log_spectrogram(wave[0], sr)
    assert spec.shape[0] == int(round(0.025 * sr)) // 2 + 1
    peak_bin = spec[:, 10].argmax()
    assert abs(peak_bin * sr / (2 * (spec.shape[0] - 1)) - 1000) < 50
    assert spec.min() >= spec.max() - 80.0 - 1e-6
    arr = activation_with_audio(rng.random((2, 2, 20)), wave, np.array([sr, 2 * sr]), sr,
                                [[(0.1, 0.5, "dog")], []], ["a", "b"], ["head 0", "head 1"],
                                dpi=40)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3
    with pytest.raises(ValueError, match="activations must be"):
        activation_with_audio(rng.random((2, 20)), wave, np.ones(2), sr, [[], []], "ab", ["h"])
