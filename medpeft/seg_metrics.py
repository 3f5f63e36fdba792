"""Segmentation metrics: MMSegmentation's mIoU/mDice/aAcc, MONAI's per-image Dice and HD95, and pixel-level ECE.

Label maps are integer arrays: ``pred`` and ``truth`` of shape (N, H, W), or lists of (H, W) maps whose sizes may
differ between images. Truth pixels equal to ``ignore_index`` are left out of every metric. Values are fractions
in [0, 1] like :mod:`medpeft.metrics` (tables multiply by 100); HD95 is in pixels.

**Set-level (MMSegmentation's** ``IoUMetric`` **).** Per class c, the intersection ``|P_c ∩ T_c|`` and the areas
``|P_c|``, ``|T_c|`` are summed over every pixel of every image of the set; then

- ``IoU/c = I_c / (|P_c| + |T_c| - I_c)`` and ``Dice/c = 2 I_c / (|P_c| + |T_c|)``;
- ``mIoU`` and ``mDice`` are the means over classes, background included;
- ``aAcc = sum_c I_c / sum_c |T_c|`` (pixel accuracy).

A class absent from both the prediction and the truth of the whole set has 0 / 0: its IoU and Dice are NaN and it
is left out of the means (``np.nanmean``, as mmseg). A class absent from the truth but predicted somewhere has
IoU = Dice = 0 and counts. If every class is NaN (no scored pixel) the means are NaN.

**Per image (MONAI's** ``DiceMetric()`` **defaults:** ``include_background=True, ignore_empty=True,
reduction="mean"`` **).** ``mDice_per_image``: per image and class, Dice = 2|P ∩ T| / (|P| + |T|) when the class
is in the image's truth, NaN when it is not (a false positive of a class absent from the truth is therefore not
penalised here, only in the set-level numbers); each image's mean over its non-NaN classes, then the mean over
images.

**HD95 (MONAI's** ``compute_hausdorff_distance(percentile=95)`` **, foreground classes only).** Per image and class
c >= 1: the boundary of a mask is its pixels with a 4-neighbour outside it or outside the image
(``mask & ~binary_erosion(mask)``, as MONAI); d(A→B) is, for each boundary pixel of A, the Euclidean distance to
the nearest boundary pixel of B; HD95 = max(95th percentile of d(P→T), 95th percentile of d(T→P)) (numpy's linear
percentile). Empty masks: if the class is in neither P nor T the pair is NaN and left out; if it is in exactly one
of them the pair gets the image diagonal ``sqrt((H-1)² + (W-1)²)``, the largest distance two pixels can have
(MONAI 1.6 gives NaN there and leaves the pair out, which would not count a missed or hallucinated structure).
``HD95`` reduces the pairs as ``mDice_per_image`` does (per-image mean, then mean over images with a value); NaN
when no pair has one. Ignored truth pixels are taken out of P. Where both masks are non-empty, HD95 and
``mDice_per_image`` equal MONAI 1.6.1's to float32 precision (checked on random label maps).

**ECE:** top-label pixel ECE, 15 equal-width bins on the maximum softmax probability
(:func:`medpeft.metrics.expected_calibration_error` over the scored pixels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import UserError
from .metrics import expected_calibration_error


def _maps(x, name: str) -> list[np.ndarray]:
    """The (H, W) maps of an (N, H, W) array or a list of (H, W) arrays."""
    maps = list(x) if isinstance(x, (list, tuple)) or np.ndim(x) == 3 else None
    if not maps or any(np.ndim(m) != 2 for m in maps):
        raise UserError(f"{name} must be an (N, H, W) array or a list of (H, W) maps with N >= 1")
    return [np.asarray(m) for m in maps]


def _pairs(pred, truth) -> list[tuple[np.ndarray, np.ndarray]]:
    pred, truth = _maps(pred, "pred"), _maps(truth, "truth")
    if len(pred) != len(truth):
        raise UserError(f"pred has {len(pred)} maps and truth {len(truth)}: give one prediction per image")
    for i, (p, t) in enumerate(zip(pred, truth)):
        if p.shape != t.shape:
            raise UserError(f"image {i}: prediction {p.shape} and truth {t.shape} differ in size")
    return list(zip(pred, truth))


def confusion(pred, truth, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 pixel counts, rows = truth class, columns = predicted class; truth == ``ignore_index`` skipped.

    ``pred`` and ``truth``: integer arrays of one shape (any), or lists of (H, W) maps of pairwise equal shapes.
    A truth value outside [0, C) other than ``ignore_index``, or a prediction outside [0, C) at a scored pixel,
    raises :class:`UserError`.
    """
    if isinstance(pred, (list, tuple)):
        return np.sum([confusion(p, t, num_classes, ignore_index) for p, t in _pairs(pred, truth)], axis=0)
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise UserError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(truth.dtype, np.integer)):
        raise UserError(f"label maps must be integer arrays, got {pred.dtype} and {truth.dtype}")
    scored = truth != ignore_index
    t, p = truth[scored].astype(np.int64), pred[scored].astype(np.int64)
    for what, v in (("truth", t), ("prediction", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            bad = v[(v < 0) | (v >= num_classes)][0]
            raise UserError(
                f"{what} holds label {bad}, outside 0..{num_classes - 1} (num_classes={num_classes}, "
                f"ignore_index={ignore_index})"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(values[~np.isnan(values)].mean()) if np.any(~np.isnan(values)) else float("nan")


def _two_step_mean(rows: list[np.ndarray]) -> float:
    """MONAI's ``reduction="mean"``: each image's mean over its non-NaN entries, then the mean over images."""
    return _nanmean([_nanmean(r) for r in rows])


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred_mask: np.ndarray, truth_mask: np.ndarray) -> float:
    """The symmetric 95 % Hausdorff distance (pixels) between two boolean masks; the empty-mask rule of the module
    docstring (NaN if both empty, the image diagonal if one is)."""
    pred_mask, truth_mask = np.asarray(pred_mask, bool), np.asarray(truth_mask, bool)
    if not pred_mask.any() and not truth_mask.any():
        return float("nan")
    if not pred_mask.any() or not truth_mask.any():
        return float(np.hypot(*(np.array(pred_mask.shape) - 1)))
    bp, bt = _boundary(pred_mask), _boundary(truth_mask)
    d_pt = ndimage.distance_transform_edt(~bt)[bp]
    d_tp = ndimage.distance_transform_edt(~bp)[bt]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def pixel_ece(probs, truth, n_bins: int = 15, ignore_index: int = 255) -> float:
    """Top-label ECE over every scored pixel: ``probs`` (N, C, H, W) softmax probabilities (or a list of
    (C, H, W)), ``truth`` (N, H, W) labels (or a list of (H, W)); confidence = max_c p_c, correct = argmax == truth.
    """
    prob_maps = list(probs) if isinstance(probs, (list, tuple)) or np.ndim(probs) == 4 else None
    truth_maps = _maps(truth, "truth")
    if not prob_maps or len(prob_maps) != len(truth_maps):
        raise UserError("probs must be (N, C, H, W) or a list of (C, H, W) arrays, one per truth map")
    rows, labels = [], []
    for i, (p, t) in enumerate(zip(prob_maps, truth_maps)):
        p = np.asarray(p, np.float64)
        if p.ndim != 3 or p.shape[1:] != t.shape:
            raise UserError(f"image {i}: probabilities {p.shape} do not match truth {t.shape} as (C, H, W)")
        scored = t != ignore_index
        rows.append(p[:, scored].T)
        labels.append(t[scored].astype(np.int64))
    return expected_calibration_error(np.concatenate(rows), np.concatenate(labels), multilabel=False, n_bins=n_bins)


def segmentation_metrics(
    pred, truth, num_classes: int, *, probs=None, ignore_index: int = 255, class_names=None
) -> dict[str, float]:
    """Every segmentation metric of the module docstring, as a flat dict of floats.

    Keys: ``mIoU``, ``mDice``, ``aAcc``, ``IoU/<name>`` and ``Dice/<name>`` per class (NaN for a class absent from
    both prediction and truth), ``mDice_per_image``, ``HD95`` and, when ``probs`` is given, ``ECE``.
    ``class_names`` defaults to the class indices as strings.
    """
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise UserError(f"class_names has {len(names)} names for num_classes={num_classes}")
    pairs = _pairs(pred, truth)
    per_image = [confusion(p, t, num_classes, ignore_index) for p, t in pairs]
    total = np.sum(per_image, axis=0)
    inter, area_pred, area_truth = np.diag(total), total.sum(0), total.sum(1)
    iou = _ratio(inter, area_pred + area_truth - inter)
    dice = _ratio(2 * inter, area_pred + area_truth)
    dice_rows = [np.where(cm.sum(1) > 0, _ratio(2 * np.diag(cm), cm.sum(0) + cm.sum(1)), np.nan) for cm in per_image]
    hd_rows = []
    for p, t in pairs:
        scored = t != ignore_index
        hd_rows.append(np.array([hd95((p == c) & scored, t == c) for c in range(1, num_classes)]))
    out = {
        "mIoU": _nanmean(iou),
        "mDice": _nanmean(dice),
        "aAcc": float(inter.sum() / area_truth.sum()) if area_truth.sum() else float("nan"),
        **{f"IoU/{n}": float(v) for n, v in zip(names, iou)},
        **{f"Dice/{n}": float(v) for n, v in zip(names, dice)},
        "mDice_per_image": _two_step_mean(dice_rows),
        "HD95": _two_step_mean(hd_rows),
    }
    if probs is not None:
        out["ECE"] = pixel_ece(probs, truth, ignore_index=ignore_index)
    return out
