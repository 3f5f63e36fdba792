"""Segmentation metrics against naive per-pixel / per-class loops written independently of medpeft.seg_metrics."""

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from medpeft import seg_metrics
from medpeft.errors import UserError

C = 5  # class 2 is predicted but never true, class 3 true but never predicted, class 4 in neither


def random_maps(seed, sizes=((9, 7), (6, 11), (8, 8))):
    rng = np.random.default_rng(seed)
    preds = [rng.choice([0, 1, 2], size=s, p=[0.5, 0.3, 0.2]) for s in sizes]
    truths = [rng.choice([0, 1, 3], size=s, p=[0.4, 0.4, 0.2]) for s in sizes]
    for t in truths:  # a few ignored pixels
        t[rng.random(t.shape) < 0.1] = 255
    return preds, truths


def naive_counts(preds, truths, c):
    tp = fp = fn = 0
    for p, t in zip(preds, truths):
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                if t[i, j] == 255:
                    continue
                if p[i, j] == c and t[i, j] == c:
                    tp += 1
                elif p[i, j] == c:
                    fp += 1
                elif t[i, j] == c:
                    fn += 1
    return tp, fp, fn


def naive_mean_skipping_none(values):
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept)


def naive_per_image_dice(p, t):
    scores = []
    for c in range(C):
        tp, fp, fn = naive_counts([p], [t], c)
        if tp + fn > 0:  # class in this image's truth
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_confusion_matches_sklearn():
    preds, truths = random_maps(0)
    flat_p = np.concatenate([p.ravel() for p in preds])
    flat_t = np.concatenate([t.ravel() for t in truths])
    keep = flat_t != 255
    expected = confusion_matrix(flat_t[keep], flat_p[keep], labels=list(range(C)))
    got = seg_metrics.confusion(preds, truths, C)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    one = truths[2] != 255
    assert np.array_equal(
        seg_metrics.confusion(preds[2], truths[2], C), confusion_matrix(truths[2][one], preds[2][one], labels=range(C))
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_set_level_metrics_match_naive_loops(seed):
    preds, truths = random_maps(seed)
    names = ["bg", "a", "b", "c", "d"]
    got = seg_metrics.segmentation_metrics(preds, truths, C, class_names=names)
    ious, dices = [], []
    for c in range(C):
        tp, fp, fn = naive_counts(preds, truths, c)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
        dices.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None)
    for c, name in enumerate(names):
        if ious[c] is None:
            assert math.isnan(got[f"IoU/{name}"]) and math.isnan(got[f"Dice/{name}"])
        else:
            assert abs(got[f"IoU/{name}"] - ious[c]) < 1e-9 and abs(got[f"Dice/{name}"] - dices[c]) < 1e-9
    assert got["IoU/b"] == 0 and got["IoU/c"] == 0 and math.isnan(got["IoU/d"])  # the absent-class cases occur
    assert abs(got["mIoU"] - naive_mean_skipping_none(ious)) < 1e-9
    assert abs(got["mDice"] - naive_mean_skipping_none(dices)) < 1e-9
    correct = sum(int(p[i, j] == t[i, j]) for p, t in zip(preds, truths) for i, j in np.ndindex(t.shape))
    scored = sum(int(t[i, j] != 255) for t in truths for i, j in np.ndindex(t.shape))
    assert abs(got["aAcc"] - correct / scored) < 1e-9
    expected_per_image = sum(naive_per_image_dice(p, t) for p, t in zip(preds, truths)) / len(preds)
    assert abs(got["mDice_per_image"] - expected_per_image) < 1e-9
    assert "ECE" not in got


def test_hand_example():
    """2 classes, one image: truth [[0, 1], [1, 1]], prediction [[0, 0], [1, 1]]."""
    got = seg_metrics.segmentation_metrics(np.array([[[0, 0], [1, 1]]]), np.array([[[0, 1], [1, 1]]]), 2)
    assert got["IoU/0"] == pytest.approx(1 / 2) and got["IoU/1"] == pytest.approx(2 / 3)
    assert got["Dice/0"] == pytest.approx(2 / 3) and got["Dice/1"] == pytest.approx(4 / 5)
    assert got["mIoU"] == pytest.approx(7 / 12) and got["aAcc"] == pytest.approx(3 / 4)


def naive_boundary(mask):
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                nbrs = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
                out[i, j] = any(not (0 <= a < h and 0 <= b < w) or not mask[a, b] for a, b in nbrs)
    return out


def brute_hd95(a, b):
    pa, pb = np.argwhere(naive_boundary(a)), np.argwhere(naive_boundary(b))
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(dist.min(1), 95), np.percentile(dist.min(0), 95))


def blob(rng, shape):
    mask = rng.random(shape) < 0.3
    mask[rng.integers(0, shape[0]) :, rng.integers(0, shape[1]) :] ^= True  # a large rectangle and speckle
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a, b = blob(rng, (13, 10)), blob(rng, (13, 10))
    assert abs(seg_metrics.hd95(a, b) - brute_hd95(a, b)) < 1e-9


def test_hd95_empty_masks_and_reduction():
    empty, some = np.zeros((5, 8), bool), np.zeros((5, 8), bool)
    some[1:3, 2:5] = True
    assert math.isnan(seg_metrics.hd95(empty, empty))
    assert seg_metrics.hd95(some, empty) == seg_metrics.hd95(empty, some) == pytest.approx(math.hypot(4, 7))
    # image 0: class 1 matches, class 2 predicted only; image 1: class 1 in neither (left out), class 2 matches
    t0, t1 = np.zeros((9, 9), np.int64), np.zeros((9, 9), np.int64)
    t0[2:6, 3:8], t1[1:4, 1:7] = 1, 2
    p0, p1 = t0.copy(), t1.copy()
    p0[0, 0], p0[5, 3:8], p1[4, 2] = 2, 0, 2
    got = seg_metrics.segmentation_metrics([p0, p1], [t0, t1], 3)
    image0 = (brute_hd95(p0 == 1, t0 == 1) + math.hypot(8, 8)) / 2
    image1 = brute_hd95(p1 == 2, t1 == 2)
    assert image0 > 0 and image1 > 0 and abs(got["HD95"] - (image0 + image1) / 2) < 1e-9


def naive_ece(probs, truths, n_bins=15):
    conf, hit = [], []
    for p, t in zip(probs, truths):
        for i, j in np.ndindex(t.shape):
            if t[i, j] != 255:
                conf.append(max(p[:, i, j]))
                hit.append(float(np.argmax(p[:, i, j]) == t[i, j]))
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [k for k, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            gap = abs(sum(hit[k] for k in members) / len(members) - sum(conf[k] for k in members) / len(members))
            total += len(members) / len(conf) * gap
    return total


def test_pixel_ece_matches_naive_bins():
    preds, truths = random_maps(4)
    rng = np.random.default_rng(4)
    probs = []
    for t in truths:
        logits = rng.normal(size=(C,) + t.shape) * 2
        probs.append(np.exp(logits) / np.exp(logits).sum(0))
    assert abs(seg_metrics.pixel_ece(probs, truths) - naive_ece(probs, truths)) < 1e-9
    got = seg_metrics.segmentation_metrics(preds, truths, C, probs=probs)
    assert abs(got["ECE"] - naive_ece(probs, truths)) < 1e-9


def test_stacked_and_listed_inputs_agree():
    preds, truths = random_maps(5, sizes=((6, 6),) * 3)
    a = seg_metrics.segmentation_metrics(np.stack(preds), np.stack(truths), C)
    b = seg_metrics.segmentation_metrics(preds, truths, C)
    assert a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_bad_inputs_raise_one_line():
    t = np.zeros((1, 4, 4), np.int64)
    with pytest.raises(UserError, match="prediction holds label 7"):
        seg_metrics.segmentation_metrics(t + 7, t, 3)
    with pytest.raises(UserError, match="truth holds label 3"):
        seg_metrics.confusion(t, t + 3, 3)
    with pytest.raises(UserError, match="differ in size"):
        seg_metrics.segmentation_metrics([np.zeros((4, 4), int)], [np.zeros((4, 5), int)], 2)
    with pytest.raises(UserError, match="class_names"):
        seg_metrics.segmentation_metrics(t, t, 2, class_names=["bg"])
