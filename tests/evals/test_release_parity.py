"""denseav_jax.evals.metrics against a numpy re-statement of the DenseAV release's evaluation.

The reference functions below (``ref_*``) re-state, from reading them, the release's
``denseav/eval_utils.py`` (``prep_heatmap``, ``multi_iou``, ``get_paired_heatmaps``: the basic
and advanced heat maps and the per-class pooling, with torchmetrics'
``binary_average_precision``) and ``denseav/train.py`` (``_calc_recalls``,
``disentangle_validation``). Only the bilinear resize is computed with PyTorch itself
(``F.interpolate(mode="bilinear")``, ``align_corners=False``), so the tests that need it skip
without torch.

Where metrics.py documents a deliberate difference from the release (AP of a class with no
positive pixel is 0, not NaN; advanced windows are clipped to [0, T] and never empty where the
release raises or divides by zero; retrieval ties counted pessimistically where ``topk``'s
order is unspecified; a constant set of heat maps normalised to zeros, not NaN), the tests
check our documented behaviour and, where it is defined, the release's.
"""

import numpy as np
import pytest

from denseav_jax.testing import tolerance
from denseav_jax.evals.metrics import (
    advanced_windows,
    average_precision,
    best_threshold_iou,
    bilinear_resize,
    disentanglement_metrics,
    prompted_segmentation_metrics,
    prompted_segmentation_per_class,
    prompted_segmentation_per_class_from_masks,
    retrieval_metrics,
)

SEEDS = (0, 1, 2, 3, 4)


# ------------------------------------------------------------------------------------------
# The release, re-stated
# ------------------------------------------------------------------------------------------
def ref_binary_ap(preds, target):
    """torchmetrics ``binary_average_precision(preds, target)`` (thresholds=None).

    The binary clf curve: scores sorted descending, one operating point at the last index of
    each run of equal scores; precision/recall reversed with (P=1, R=0) appended; AP =
    -sum((R[i+1] - R[i]) * P[i]). NaN when there is no positive (0/0 recall).
    """
    preds = np.asarray(preds, np.float64).ravel()
    target = np.asarray(target).ravel().astype(bool)
    order = np.argsort(-preds, kind="mergesort")
    p, t = preds[order], target[order]
    thr_idx = np.r_[np.flatnonzero(np.diff(p)), p.size - 1]
    tps = np.cumsum(t)[thr_idx].astype(np.float64)
    fps = 1.0 + thr_idx - tps
    precision = tps / (tps + fps)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    return float(-np.sum((recall[1:] - recall[:-1]) * precision[:-1]))


def ref_multi_iou(prediction, target, k=20):
    """``multi_iou``: thresholds linspace(min, max, k) over the (float32) predictions, hard
    prediction ``>`` threshold, a zero union replaced by 1, the best IoU."""
    prediction = np.asarray(prediction, np.float32).ravel()
    target = np.asarray(target).ravel() > 0.5
    thresholds = np.linspace(prediction.min(), prediction.max(), k).astype(np.float32)
    hard = prediction[None, :] > thresholds[:, None]
    inter = np.logical_and(hard, target[None]).sum(1).astype(np.float64)
    union = np.logical_or(hard, target[None]).sum(1).astype(np.float64)
    union = np.where(union == 0, 1.0, union)
    return float(np.max(inter / union))


def ref_masked_mean(sims, masks):
    """``prep_heatmap``'s time reduction: masked mean over t (no floor on the divisor)."""
    masks = np.asarray(masks, np.float32)
    hm = np.einsum("bhwt,bt->bhw", np.asarray(sims, np.float32), masks) \
        / masks.sum(-1).reshape(-1, 1, 1)
    return hm.astype(np.float32)


def torch_resize(hm, size):
    """``F.interpolate(hm.unsqueeze(1), size, mode="bilinear").squeeze(1)``."""
    torch = pytest.importorskip("torch")
    out = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(hm)).unsqueeze(1),
                                          tuple(size), mode="bilinear")
    return out.squeeze(1).numpy()


def ref_prep_heatmap(sims, masks, h, w, resize=torch_resize):
    """``prep_heatmap``: masked mean over t, one global min and max over the whole set, then
    the bilinear resize to (h, w) (torch's, unless another is given)."""
    hm = ref_masked_mean(sims, masks)
    hm -= hm.min()
    hm /= hm.max()
    return resize(hm, (h, w))


def ref_advanced_masks(timing, total_length, num_steps, margin=0.2):
    """The advanced mask of ``get_paired_heatmaps``: timing -+ margin, as a fraction of the
    padded clip, times T, start floored / end ceiled, then
    ``one_hot(bounds, T).cumsum(-1).sum(-2) == 1`` (float32 like the release's tensors).
    ``F.one_hot`` raises for a bound outside [0, T - 1]; so does this."""
    timing = np.array(timing, np.float32).copy()
    timing[:, 0] -= np.float32(margin)
    timing[:, 1] += np.float32(margin)
    fracs = timing / np.float32(total_length)
    bounds = np.float32(num_steps) * fracs
    bounds[:, 0] = np.floor(bounds[:, 0])
    bounds[:, 1] = np.ceil(bounds[:, 1])
    bounds = bounds.astype(np.int64)
    if bounds.min() < 0 or bounds.max() >= num_steps:
        raise IndexError("one_hot: class values must be in [0, num_classes)")
    one_hot = np.eye(num_steps, dtype=np.int64)[bounds]  # [N, 2, T]
    return one_hot.cumsum(-1).sum(-2) == 1


def ref_paired_metrics(sims, audio_mask, class_maps, prompt_classes, timing=None,
                       total_length=None, resize=torch_resize):
    """``get_paired_heatmaps`` without the model: per unique prompt class, pooled AP and
    multi-IoU of the basic (and, with timing, advanced) heat maps. Returns per-class lists."""
    prompt_classes = np.asarray(prompt_classes)
    gt = class_maps == prompt_classes.reshape(-1, 1, 1)
    _, fullh, fullw = gt.shape
    maps = {"basic": ref_prep_heatmap(sims, audio_mask, fullh, fullw, resize)}
    if timing is not None:
        adv = ref_advanced_masks(timing, total_length, audio_mask.shape[1])
        maps["advanced"] = ref_prep_heatmap(sims, adv, fullh, fullw, resize)
    metrics = {}
    classes = np.unique(prompt_classes)
    for c in classes:
        subset = np.flatnonzero(prompt_classes == c)
        for name, hm in maps.items():
            metrics.setdefault(f"{name}_ap", []).append(
                ref_binary_ap(hm[subset].ravel(), gt[subset].ravel()))
            metrics.setdefault(f"{name}_iou", []).append(
                ref_multi_iou(hm[subset].ravel(), gt[subset].ravel()))
    return {k: np.array(v) for k, v in metrics.items()}, classes


def ref_pairwise_sims(audio_feats, image_feats, audio_mask, num_heads, nonneg=False,
                      head_agg="max_elementwise", agg_heads=True, audio_cls=None,
                      image_cls=None):
    """``get_pairwise_sims(preds, raw=False, agg_sim=False, agg_heads)`` for one image per
    audio (channels first, as the release: audio [B, C, F, T], image [B, C, H, W]): the
    einsum ``bkcft,bkchw,bt->bkhwft`` (the audio mask multiplies the product), the CLS term
    added after it, then ``prepare_sims``' clamp and head aggregation. [B, (K,) H, W, F, T]."""
    b, c, f, t = audio_feats.shape
    a = np.asarray(audio_feats, np.float64).reshape(b, num_heads, c // num_heads, f, t)
    v = np.asarray(image_feats, np.float64).reshape(b, num_heads, c // num_heads,
                                                    *image_feats.shape[-2:])
    sims = np.einsum("bkcft,bkchw,bt->bkhwft", a, v, np.asarray(audio_mask, np.float64))
    if audio_cls is not None:
        ac = np.asarray(audio_cls, np.float64).reshape(b, num_heads, -1)
        vc = np.asarray(image_cls, np.float64).reshape(b, num_heads, -1)
        sims = sims + np.einsum("bkc,bkc->bk", ac, vc).reshape(b, num_heads, 1, 1, 1, 1)
    if nonneg:
        sims = np.maximum(sims, 0)
    if agg_heads:
        if head_agg == "max_elementwise":
            sims = sims.max(1, keepdims=True)
        sims = sims.sum(1) if head_agg in ("sum", "max_elementwise") else sims.max(1)
    return sims


def ref_misa_head_scores(sims, audio_mask, mask_silence=True):
    """``ImageThenAudioAggregator('max', 'avg')._agg_sim`` of agg_heads=False sims
    [B, K, H, W, F, T]: max over h, w, mean over f, masked mean over t (all ones without
    mask_silence). [B, K]."""
    mask = np.asarray(audio_mask, np.float64)
    if not mask_silence:
        mask = np.ones_like(mask)
    x = sims.max(axis=(2, 3)).mean(-2)  # [B, K, T]
    return (x * mask[:, None]).sum(-1) / np.maximum(mask.sum(-1), 1e-3)[:, None]


def ref_calc_recalls(sim):
    """``_calc_recalls`` (sim[audio, image]): topk(10) along dim 0 -> A_r, along dim 1 -> I_r."""
    n = sim.shape[0]
    top_a = np.argsort(-sim, axis=0, kind="stable")[:10]                  # [10, N]
    top_10_a = top_a == np.arange(n)[None, :]
    top_i = np.argsort(-sim, axis=1, kind="stable")[:, :10]               # [N, 10]
    top_10_i = (top_i == np.arange(n)[:, None]).T                          # [10, N]
    a_recall = lambda p: float(top_10_a[:p].any(0).mean())  # noqa: E731
    i_recall = lambda p: float(top_10_i[:p].any(0).mean())  # noqa: E731
    return {"A_r1": a_recall(1), "A_r5": a_recall(5), "A_r10": a_recall(10),
            "I_r1": i_recall(1), "I_r5": i_recall(5), "I_r10": i_recall(10)}


def ref_disentangle(word_scores, sound_scores):
    """``disentangle_validation``'s ap/act matrices and ap_dis/act_dis."""
    all_scores = np.concatenate([word_scores, sound_scores]).astype(np.float64)
    all_scores -= all_scores.min(0, keepdims=True)
    all_scores /= np.maximum(all_scores.max(0, keepdims=True), 1e-4)
    is_words = np.r_[np.ones(len(word_scores)), np.zeros(len(sound_scores))].astype(bool)
    ap = np.zeros((2, 2))
    act = np.zeros((2, 2))
    for head in range(2):
        for dataset_num in range(2):
            labels = is_words if dataset_num == 0 else ~is_words
            ap[head, dataset_num] = ref_binary_ap(all_scores[:, head], labels)
            act[head, dataset_num] = 1 - all_scores[:, head][labels].mean()
    ap_dis = max(.5 * (ap[0, 0] + ap[1, 1]), .5 * (ap[0, 1] + ap[1, 0]))
    act_dis = max(.5 * (act[0, 0] + act[1, 1]), .5 * (act[0, 1] + act[1, 0]))
    return ap, act, ap_dis, act_dis


# ------------------------------------------------------------------------------------------
# Our pipeline (the metrics take heat maps; the time reduction is the model's masked mean)
# ------------------------------------------------------------------------------------------
def ours_heatmaps(sims, mask):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from denseav_jax.similarity import dense  # pylint: disable=import-outside-toplevel
    m = jnp.asarray(mask)[:, None, None, :]
    return np.asarray(dense.masked_mean(jnp.asarray(sims, jnp.float32), m, axis=-1))


def random_set(seed, n=36, h=7, s=28, t=16, num_classes=5):
    """Random sims [N, h, h, T], audio masks (>= 4 valid steps), class maps [N, S, S] with
    labels 0..num_classes (each example's prompt class present), prompt timings in range."""
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((n, h, h, t)).astype(np.float32)
    lengths = rng.integers(4, t + 1, n)
    mask = np.arange(t)[None] < lengths[:, None]
    prompt = rng.integers(1, num_classes + 1, n)
    prompt[:num_classes] = np.arange(1, num_classes + 1)  # every class is prompted
    # Blocky label maps (4x4 blocks) so positives are spatially coherent.
    blocks = rng.integers(0, num_classes + 1, (n, s // 4, s // 4))
    class_maps = np.repeat(np.repeat(blocks, 4, 1), 4, 2)
    class_maps[np.arange(n), 0, 0] = prompt  # at least one positive pixel per example
    clip = 10.0
    start = rng.uniform(0.3, 7.0, n)
    end = start + rng.uniform(0.1, 2.0, n)  # (end + 0.2) / 10 * 16 < 15: bounds below T
    return sims, mask, class_maps, prompt, np.stack([start, end], 1), clip


# ------------------------------------------------------------------------------------------
# Prompted segmentation
# ------------------------------------------------------------------------------------------
def test_ref_binary_ap_and_multi_iou_match_ours_on_random_pools():
    rng = np.random.default_rng(10)
    for _ in range(10):
        n = int(rng.integers(50, 400))
        s = rng.random(n).astype(np.float32)
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        y[0] = True
        assert average_precision(s, y) == pytest.approx(ref_binary_ap(s, y), abs=1e-9)
        assert best_threshold_iou(s, y) == pytest.approx(ref_multi_iou(s, y), abs=1e-9)
        # With ties (the release groups equal scores into one threshold too).
        s2 = np.round(s, 1)
        assert average_precision(s2, y) == pytest.approx(ref_binary_ap(s2, y), abs=1e-9)
        assert best_threshold_iou(s2, y) == pytest.approx(ref_multi_iou(s2, y), abs=1e-9)


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for hw, out in (((7, 7), (28, 28)), ((7, 5), (30, 17)), ((14, 14), (5, 9)), ((1, 3), (4, 4)),
                    ((14, 14), (224, 224)), ((13, 17), (200, 301)), ((50, 60), (7, 9))):
        x = rng.standard_normal((3,) + hw)
        # float64: the same arithmetic, to rounding.
        want = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], out,
                                               mode="bilinear")[:, 0].numpy()
        got = bilinear_resize(x, out)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        # float32: both round (torch's weights and products are float32 too), ~1 ulp apart.
        x = x.astype(np.float32)
        want = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], out,
                                               mode="bilinear")[:, 0].numpy()
        got = bilinear_resize(x, out)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_prompted_segmentation_matches_release_pipeline(seed):
    sims, mask, class_maps, prompt, timing, clip = random_set(seed)
    t = mask.shape[1]
    window = advanced_windows(timing[:, 0], timing[:, 1], clip, t, margin_s=0.2)
    np.testing.assert_array_equal(window, ref_advanced_masks(timing, clip, t))
    # The release's metrics on the same heat maps resized by our bilinear_resize: the AP /
    # IoU / pooling / normalisation stages must then agree to rounding.
    ref, ref_classes = ref_paired_metrics(sims, mask, class_maps, prompt, timing, clip,
                                          resize=bilinear_resize)
    for name, m in (("basic", mask), ("advanced", window)):
        lowres = ref_masked_mean(sims, m)
        # The model's masked mean (the time reduction the evaluator applies) is the same.
        np.testing.assert_allclose(ours_heatmaps(sims, m), lowres, rtol=0, atol=1e-6)
        pc = prompted_segmentation_per_class(lowres, class_maps, prompt)
        np.testing.assert_array_equal(pc["classes"], ref_classes)
        assert len(ref_classes) == 5
        np.testing.assert_allclose(pc["ap"], ref[f"{name}_ap"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(pc["iou"], ref[f"{name}_iou"], rtol=0, atol=1e-9)
        # The gathered-mask form gives the same numbers.
        pm = prompted_segmentation_per_class_from_masks(
            lowres, class_maps == prompt[:, None, None], prompt)
        for k in ("ap", "iou", "chance_ap"):
            np.testing.assert_array_equal(pm[k], pc[k])
        # Mean over classes, as the release's `torch.tensor(v).mean()`.
        agg = prompted_segmentation_metrics(lowres, class_maps, prompt)
        assert agg["ap"] == pytest.approx(float(np.mean(ref[f"{name}_ap"])), abs=1e-9)
        assert agg["iou"] == pytest.approx(float(np.mean(ref[f"{name}_iou"])), abs=1e-9)
        # Not trivially equal: random maps are far from perfect.
        assert 0.0 < agg["ap"] < 0.9 and 0.0 < agg["iou"] < 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_prompted_segmentation_matches_release_pipeline_with_torch_resize(seed):
    """End to end against torch's F.interpolate. The resized maps agree to ~1 float32 ulp, but
    not bit for bit: where both bilinear weights fall on the same source pixel (the last
    half-pixel rows/columns, x * 7/8 + x * 1/8) ours returns exactly x, as the neighbouring
    pixels do, while torch's float32 arithmetic lands an ulp off. Those mathematically tied
    pixels are one threshold for us and an arbitrary order for torch, which moves a class's
    pooled AP and IoU: both must lie within what the maps' asserted 1e-6 disagreement can
    move them to (testing/tolerance.py); the test above (same resize) and the next (exact
    arithmetic) pin the rest to rounding."""
    pytest.importorskip("torch")
    sims, mask, class_maps, prompt, timing, clip = random_set(seed)
    ref, _ = ref_paired_metrics(sims, mask, class_maps, prompt, timing, clip)
    window = advanced_windows(timing[:, 0], timing[:, 1], clip, mask.shape[1], margin_s=0.2)
    for name, m in (("basic", mask), ("advanced", window)):
        hm = ours_heatmaps(sims, m)
        # The resized, normalised maps themselves agree to float32 rounding.
        norm = hm - hm.min()
        norm /= norm.max()
        np.testing.assert_allclose(bilinear_resize(norm, (28, 28)),
                                   ref_prep_heatmap(sims, m, 28, 28), rtol=0, atol=1e-6)
        pc = prompted_segmentation_per_class(hm, class_maps, prompt)
        iv = tolerance.segmentation_intervals(hm, class_maps == prompt[:, None, None], prompt,
                                              0.0, map_delta=1e-6, per_class=True)
        for k in ("ap", "iou"):
            tolerance.assert_within(pc[k], iv[k], what=f"our {name}_{k}")
            tolerance.assert_within(ref[f"{name}_{k}"], iv[k], what=f"the release's {name}_{k}")


@pytest.mark.parametrize("seed", SEEDS)
def test_prompted_segmentation_matches_release_exactly_on_dyadic_inputs(seed):
    """Inputs on which every float32 step is exact (integer sims, power-of-two mask lengths,
    a min of 0 and max of 1024, 7 -> 28 resize weights in eighths): torch's resize and ours
    give identical maps, so the metrics agree to rounding, ties (plentiful here) included."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(100 + seed)
    n, t = 30, 16
    sims = 64.0 * rng.integers(1, 16, (n, 7, 7, t)).astype(np.float32)  # coarse: many ties
    sims[0, 0, 0, :] = 1024.0  # global max of the masked means
    sims[0, 0, 1, :] = 0.0     # global min
    mask = np.arange(t)[None] < rng.choice([1, 2, 4, 8, 16], n)[:, None]
    _, _, class_maps, prompt, _, _ = random_set(seed, n=n)
    ref, _ = ref_paired_metrics(sims, mask, class_maps, prompt)
    hm = ours_heatmaps(sims, mask)
    assert len(np.unique(bilinear_resize(hm, (28, 28)))) < hm.shape[0] * 28 * 28 // 4  # ties
    np.testing.assert_array_equal(hm, ref_masked_mean(sims, mask))
    np.testing.assert_array_equal(bilinear_resize(hm / 1024.0, (28, 28)),
                                  ref_prep_heatmap(sims, mask, 28, 28))
    pc = prompted_segmentation_per_class(hm, class_maps, prompt)
    np.testing.assert_allclose(pc["ap"], ref["basic_ap"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pc["iou"], ref["basic_iou"], rtol=0, atol=1e-12)


def test_prompted_segmentation_hand_worked_two_examples():
    # Two examples, one per class, 2x2 maps at label size (no resize), time reduced already
    # (a single valid step). Heat maps (flattened) ex0 [0, 1, 2, 3], ex1 [4, 5, 6, 8]; one
    # global min 0 and max 8 -> ex0 [0, .125, .25, .375], ex1 [.5, .625, .75, 1].
    # Class 1 (ex0): gt [0, 0, 1, 1]: positives ranked first -> AP 1; thresholds
    #   linspace(0, .375, 20) include 7 * .375 / 19 = .138 in [.125, .25): pred {.25, .375}
    #   = gt -> IoU 1.
    # Class 2 (ex1): gt [1, 0, 0, 0]: the one positive is ranked last -> AP = P at R=1 = 1/4;
    #   every threshold is >= .5 = the positive's score, so the intersection is always empty
    #   -> IoU 0.
    # Means: AP (1 + .25) / 2 = .625, IoU (1 + 0) / 2 = .5, chance (2/4 + 1/4) / 2 = .375.
    hm = np.array([[[0, 1], [2, 3]], [[4, 5], [6, 8]]], np.float32)
    class_maps = np.array([[[0, 0], [1, 1]], [[2, 0], [0, 0]]])
    prompt = np.array([1, 2])
    pc = prompted_segmentation_per_class(hm, class_maps, prompt)
    np.testing.assert_allclose(pc["ap"], [1.0, 0.25])
    np.testing.assert_allclose(pc["iou"], [1.0, 0.0])
    m = prompted_segmentation_metrics(hm, class_maps, prompt)
    assert m == pytest.approx({"ap": 0.625, "iou": 0.5, "chance_ap": 0.375})
    if _has_torch():
        ref, _ = ref_paired_metrics(hm[..., None], np.ones((2, 1)), class_maps, prompt)
        np.testing.assert_allclose(ref["basic_ap"], [1.0, 0.25])
        np.testing.assert_allclose(ref["basic_iou"], [1.0, 0.0])


def test_prompted_segmentation_hand_worked_pooling_within_a_class():
    # Three examples: ex0, ex1 of class 1, ex2 of class 2; global max 7 (min 0).
    # ex0 [0, 1, 2, 3]/7 gt [0, 0, 1, 1] and ex1 [6, 7, 4, 5]/7 gt [1, 1, 0, 0] are each
    # perfectly ranked alone, but pooled (the release pools a class's pixels) the ranking is
    # 7p 6p 5n 4n 3p 2p 1n 0n: AP = 1/4 (1 + 1 + 3/5 + 4/6) = 49/60.
    # IoU over thresholds k/19: t in [1/7, 2/7) (k = 3) predicts {2..7}: inter 4, union 6
    # -> 2/3, the best (t in [0, 1/7): 4/7; [2/7, 3/7): 3/6; [5/7, 6/7): 2/4).
    # ex2 [7, 0, 0, 0]/7 gt [1, 0, 0, 0]: AP 1, IoU 1 (t = 0 predicts exactly the positive).
    # Means: AP (49/60 + 1) / 2 = 109/120, IoU (2/3 + 1) / 2 = 5/6.
    hm = np.array([[[0, 1], [2, 3]], [[6, 7], [4, 5]], [[7, 0], [0, 0]]], np.float32)
    class_maps = np.array([[[0, 0], [1, 1]], [[1, 1], [0, 0]], [[2, 0], [0, 0]]])
    prompt = np.array([1, 1, 2])
    m = prompted_segmentation_metrics(hm, class_maps, prompt)
    assert m["ap"] == pytest.approx(109 / 120)
    assert m["iou"] == pytest.approx(5 / 6)
    if _has_torch():
        ref, _ = ref_paired_metrics(hm[..., None], np.ones((3, 1)), class_maps, prompt)
        np.testing.assert_allclose(ref["basic_ap"], [49 / 60, 1.0])
        np.testing.assert_allclose(ref["basic_iou"], [2 / 3, 1.0])


def test_documented_differences_in_segmentation():
    rng = np.random.default_rng(12)
    hm = rng.random((4, 3, 3)).astype(np.float32)
    class_maps = np.zeros((4, 6, 6), np.int64)
    class_maps[:2, :3] = 1
    prompt = np.array([1, 1, 2, 2])  # class 2 never appears in its label maps
    pc = prompted_segmentation_per_class(hm, class_maps, prompt)
    # Release: binary_average_precision -> NaN for class 2; ours 0 (IoU is 0 in both).
    assert np.isnan(ref_binary_ap(bilinear_resize(hm[2:], (6, 6)), class_maps[2:] == 2))
    assert pc["ap"][1] == 0.0 and pc["iou"][1] == 0.0
    assert ref_multi_iou(bilinear_resize(hm[2:], (6, 6)), class_maps[2:] == 2) == 0.0
    # Class 1 is unaffected by class 2's examples except through the global min/max.
    assert 0.0 < pc["ap"][0] <= 1.0
    # A constant set: the release divides 0 by 0 (NaN maps); ours maps to zeros, and the
    # all-tied AP is then the positive fraction, the IoU 0 (every threshold is 0, nothing > 0).
    const = np.full((4, 3, 3), 2.5, np.float32)
    pc = prompted_segmentation_per_class(const, class_maps, prompt)
    assert pc["ap"][0] == pytest.approx(0.5) and pc["iou"][0] == 0.0


def _has_torch():
    try:
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------
# Advanced windows
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_steps,clip", [(16, 10.0), (50, 10.0), (37, 6.5), (101, 20.48)])
def test_advanced_windows_match_release_in_range(num_steps, clip):
    rng = np.random.default_rng(num_steps)
    n = 200
    start = rng.uniform(0.2, clip * 0.7, n)
    end = start + rng.uniform(0.0, clip * 0.2, n)
    timing = np.stack([start, end], 1)
    # Keep the release's bounds inside [0, T - 1] (it raises otherwise).
    keep = (end + 0.2) / clip * num_steps < num_steps - 1
    timing = timing[keep]
    got = advanced_windows(timing[:, 0], timing[:, 1], clip, num_steps, margin_s=0.2)
    want = ref_advanced_masks(timing, clip, num_steps)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == bool and got.shape == (len(timing), num_steps)
    assert got.any(1).all()


def test_advanced_windows_match_release_on_the_real_timing_grid():
    # The full model: 164,200-sample clips at 16 kHz (10.2625 s) -> 56 audio steps; prompt
    # timings at 10 ms resolution, stored as float32 (the release reads them as float32 too).
    # Every start in range, with several durations: the release's float32 bounds and ours
    # (float64) floor and ceil to the same steps (no bound lands on an integer there).
    clip, t = 164200 / 16000, 56
    start = np.arange(20, 960) / 100.0
    starts, ends = [], []
    for d in (0.0, 0.01, 0.07, 0.33, 1.2):
        starts.append(start)
        ends.append(start + d)
    start, end = np.concatenate(starts), np.concatenate(ends)
    keep = (end + 0.2) / clip * t < t - 1
    timing = np.stack([start[keep], end[keep]], 1).astype(np.float32)
    got = advanced_windows(timing[:, 0], timing[:, 1], clip, t, margin_s=0.2)
    np.testing.assert_array_equal(got, ref_advanced_masks(timing, clip, t))


def test_advanced_windows_hand_and_edge_cases():
    # T = 10 steps over 5 s (0.5 s a step); margin 0.2 s.
    # [1.0, 2.0] -> [0.8, 2.2] s -> steps [1.6, 4.4] -> floor 1, ceil 5 -> steps 1..4.
    w = advanced_windows([1.0], [2.0], 5.0, 10, margin_s=0.2)
    np.testing.assert_array_equal(np.flatnonzero(w[0]), [1, 2, 3, 4])
    np.testing.assert_array_equal(w, ref_advanced_masks([[1.0, 2.0]], 5.0, 10))
    # Start before the clip (release: negative one-hot index, raises): clipped to step 0.
    with pytest.raises(IndexError):
        ref_advanced_masks([[0.05, 1.0]], 5.0, 10)
    np.testing.assert_array_equal(np.flatnonzero(advanced_windows([0.05], [1.0], 5.0, 10)[0]),
                                  [0, 1, 2])
    # End reaching the clip's end (release: one_hot index T, raises): the window runs to T.
    with pytest.raises(IndexError):
        ref_advanced_masks([[4.0, 4.9]], 5.0, 10)
    np.testing.assert_array_equal(np.flatnonzero(advanced_windows([4.0], [4.9], 5.0, 10)[0]),
                                  [7, 8, 9])
    # Entirely past the clip: the last step.
    np.testing.assert_array_equal(np.flatnonzero(advanced_windows([7.0], [8.0], 5.0, 10)[0]),
                                  [9])
    # Entirely before it: the first step.
    np.testing.assert_array_equal(
        np.flatnonzero(advanced_windows([-3.0], [-2.0], 5.0, 10)[0]), [0])
    # Empty window (release: all-zero mask, masked mean 0/0): one step kept.
    # Zero margin, start = end = 1.0 s = step 2.0 exactly -> floor 2 = ceil 2.
    assert not ref_advanced_masks([[1.0, 1.0]], 5.0, 10, margin=0.0).any()
    np.testing.assert_array_equal(
        np.flatnonzero(advanced_windows([1.0], [1.0], 5.0, 10, margin_s=0.0)[0]), [2])
    with pytest.raises(ValueError):
        advanced_windows([1.0, 2.0], [2.0], 5.0, 10)
    with pytest.raises(ValueError):
        advanced_windows([1.0], [2.0], 0.0, 10)


# ------------------------------------------------------------------------------------------
# Retrieval
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_retrieval_matches_release_calc_recalls(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    # Correlated with the diagonal so the recalls are neither 0 nor 1; continuous, no ties.
    sim = rng.standard_normal((n, n)) + 2.0 * np.eye(n) * rng.random(n)[:, None]
    ref = ref_calc_recalls(sim)
    got = retrieval_metrics(sim)
    for k in (1, 5, 10):
        assert got[f"i2a_r{k}"] == pytest.approx(ref[f"A_r{k}"], abs=1e-12)
        assert got[f"a2i_r{k}"] == pytest.approx(ref[f"I_r{k}"], abs=1e-12)
    # The two directions differ on a non-symmetric matrix (so the mapping is tested).
    assert any(got[f"i2a_r{k}"] != got[f"a2i_r{k}"] for k in (1, 5, 10))


def test_retrieval_hand_case():
    # sim[audio, image]:
    #   audio 0: images [.9, .1, .8] -> true image 0 ranked 1st
    #   audio 1: images [.7, .2, .3] -> true image 1 (.2) ranked 3rd
    #   audio 2: images [.0, .6, .5] -> true image 2 (.5) ranked 2nd
    # a2i (release I_r): r1 = 1/3, r2 = 2/3.
    #   image 0: audios [.9, .7, .0] -> audio 0 1st; image 1: [.1, .2, .6] -> audio 1 2nd;
    #   image 2: [.8, .3, .5] -> audio 2 2nd.
    # i2a (release A_r): r1 = 1/3, r2 = 1.
    sim = np.array([[.9, .1, .8], [.7, .2, .3], [.0, .6, .5]])
    got = retrieval_metrics(sim, ks=(1, 2))
    assert got["a2i_r1"] == pytest.approx(1 / 3) and got["a2i_r2"] == pytest.approx(2 / 3)
    assert got["i2a_r1"] == pytest.approx(1 / 3) and got["i2a_r2"] == pytest.approx(1.0)
    assert got["chance_r1"] == pytest.approx(1 / 3)
    # Pessimistic ties (documented): a true item tied with another is not a hit at k=1,
    # whatever order topk would have picked.
    tied = np.array([[1.0, 1.0], [0.0, 1.0]])
    got = retrieval_metrics(tied, ks=(1, 2))
    assert got["a2i_r1"] == pytest.approx(0.5)  # row 0 tied -> miss; row 1 hit
    assert got["i2a_r1"] == pytest.approx(0.5)  # column 1 tied (1.0, 1.0) -> miss
    assert got["a2i_r2"] == got["i2a_r2"] == 1.0


# ------------------------------------------------------------------------------------------
# Disentanglement
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_disentanglement_matches_release(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(10, 80, 2)
    # Head 0 leans to speech, head 1 to sound, with different scales and offsets per head.
    speech = rng.standard_normal((n1, 2)) * [1.0, 3.0] + [0.8, -1.0]
    sound = rng.standard_normal((n2, 2)) * [1.0, 3.0] + [0.0, 1.5]
    ap, act, ap_dis, act_dis = ref_disentangle(speech, sound)
    got = disentanglement_metrics(speech, sound)
    np.testing.assert_allclose(got["ap"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["act"], act, rtol=0, atol=1e-12)
    assert got["ap_dis"] == pytest.approx(ap_dis, abs=1e-12)
    assert got["act_dis"] == pytest.approx(act_dis, abs=1e-12)
    assert 0.5 < got["ap_dis"] < 1.0
    # Swapping the heads swaps the assignment, not the result.
    sw = disentanglement_metrics(speech[:, ::-1], sound[:, ::-1])
    assert sw["ap_dis"] == pytest.approx(got["ap_dis"])
    assert sw["act_dis"] == pytest.approx(got["act_dis"])


def test_disentanglement_hand_cases():
    # Head 0 fires only on speech, head 1 only on sound (already in [0, 1]).
    # ap[0, 0] = ap[1, 1] = 1; ap[0, 1]: head 0 ranks the two sound pairs last behind a tie
    # of two speech pairs -> one threshold at 1 (P 0, R 0) and one at 0 (P 2/4, R 1) -> .5.
    # act[h, s] = 1 - mean activation: [[0, 1], [1, 0]].
    speech = np.array([[1.0, 0.0], [1.0, 0.0]])
    sound = np.array([[0.0, 1.0], [0.0, 1.0]])
    got = disentanglement_metrics(speech, sound)
    np.testing.assert_allclose(got["ap"], [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(got["act"], [[0.0, 1.0], [1.0, 0.0]])
    assert got["ap_dis"] == 1.0 and got["act_dis"] == 1.0
    ap, act, ap_dis, act_dis = ref_disentangle(speech, sound)
    np.testing.assert_allclose(got["ap"], ap)
    np.testing.assert_allclose(got["act"], act)
    assert (ap_dis, act_dis) == (1.0, 1.0)
    # Swapped assignment: head 0 on sound, head 1 on speech -> still 1.
    got = disentanglement_metrics(speech[:, ::-1], sound[:, ::-1])
    np.testing.assert_allclose(got["ap"], [[0.5, 1.0], [1.0, 0.5]])
    assert got["ap_dis"] == 1.0 and got["act_dis"] == 1.0
    # Uninformative: both heads score both sets alike -> every AP .5, every act .5.
    same = np.array([[0.0, 0.0], [1.0, 1.0]])
    got = disentanglement_metrics(same, same)
    np.testing.assert_allclose(got["ap"], np.full((2, 2), 0.5))
    np.testing.assert_allclose(got["act"], np.full((2, 2), 0.5))
    assert got["ap_dis"] == 0.5 and got["act_dis"] == 0.5
    # Constant heads: divisor floored at 1e-4 -> all zeros: AP = positive fraction, act 1.
    const = np.full((3, 2), 4.0)
    got = disentanglement_metrics(const, np.full((1, 2), 4.0))
    np.testing.assert_allclose(got["ap"], [[0.75, 0.25], [0.75, 0.25]])
    np.testing.assert_allclose(got["act"], np.ones((2, 2)))
    ap, act, ap_dis, act_dis = ref_disentangle(const, np.full((1, 2), 4.0))
    np.testing.assert_allclose(got["ap"], ap)
    assert got["ap_dis"] == pytest.approx(ap_dis) == 0.5


# ------------------------------------------------------------------------------------------
# The volume behind the heat maps and the disentanglement head scores
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cls", [False, True])
@pytest.mark.parametrize("head_agg", ["max_elementwise", "sum"])
def test_heat_maps_from_features_match_get_pairwise_sims(head_agg, use_cls):
    """heatmap.pair_maps (evaluation, predict, video) against the release's
    get_pairwise_sims(...).mean(-2) and prep_heatmap's masked mean, with the word windows of
    get_paired_heatmaps; the prompt words end after the audio does, so the windows run over
    padded steps, which count as the volume's zeros (the CLS term with use_cls)."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from denseav_jax.similarity import heatmap  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(20)
    b, k, c, f, t, h = 6, 2, 8, 2, 16, 5
    audio = rng.standard_normal((b, f, t, c)).astype(np.float32)
    image = rng.standard_normal((b, h, h, c)).astype(np.float32)
    audio_cls = rng.standard_normal((b, c)).astype(np.float32)
    image_cls = rng.standard_normal((b, c)).astype(np.float32)
    lengths = np.array([16, 12, 9, 6, 4, 10])
    mask = np.arange(t)[None] < lengths[:, None]
    mask[5, 3:5] = False  # A silent gap (sim.vad).
    clip = 10.0
    # Each word ends past the audio (except example 0's, whose audio fills the clip).
    start = lengths / t * clip - 1.2
    timing = np.stack([start, np.minimum(start + 2.0, clip - 0.9)], 1)
    window = advanced_windows(timing[:, 0], timing[:, 1], clip, t, margin_s=0.2)
    np.testing.assert_array_equal(window, ref_advanced_masks(timing, clip, t))
    assert (window & ~mask).sum(1)[1:].min() > 0  # Every window but 0's runs past the audio.

    sims = ref_pairwise_sims(np.moveaxis(audio, -1, 1), np.moveaxis(image, -1, 1), mask, k,
                             head_agg=head_agg, audio_cls=audio_cls if use_cls else None,
                             image_cls=image_cls if use_cls else None).mean(-2)  # [B, H, W, T]
    opts = heatmap.Options(k, head_agg, False, use_cls)
    out = heatmap.pair_maps(jnp.asarray(audio), jnp.asarray(image), jnp.asarray(mask), opts,
                            jnp.asarray(window), jnp.asarray(audio_cls), jnp.asarray(image_cls))
    np.testing.assert_allclose(np.asarray(out["heat"]), ref_masked_mean(sims, mask),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["heat_advanced"]), ref_masked_mean(sims, window),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_silence", [True, False])
def test_disentangle_head_scores_match_get_pairwise_sims(mask_silence):
    """pairs.matched_head_scores against disentangle_validation's
    get_pairwise_sims(agg_sim=True, agg_heads=False) for misa: the volume times the audio
    mask, then the time mean over the mask (or, without mask_silence, over every step, the
    padded ones as zeros)."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from denseav_jax.evals import pairs  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(21)
    b, k, c, f, t, h = 5, 2, 8, 2, 12, 4
    audio = rng.standard_normal((b, f, t, c)).astype(np.float32)
    image = rng.standard_normal((b, h, h, c)).astype(np.float32)
    mask = np.arange(t)[None] < np.array([12, 8, 5, 3, 10])[:, None]
    sims = ref_pairwise_sims(np.moveaxis(audio, -1, 1), np.moveaxis(image, -1, 1), mask, k,
                             agg_heads=False)
    want = ref_misa_head_scores(sims, mask, mask_silence)
    emb = dict(audio=jnp.asarray(audio), image=jnp.asarray(image), mask=jnp.asarray(mask),
               audio_cls=jnp.zeros((b, c)), image_cls=jnp.zeros((b, c)))
    got = pairs.matched_head_scores(emb, (k, "misa", False, False, mask_silence))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
