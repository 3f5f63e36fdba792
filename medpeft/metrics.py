"""Classification metrics: MedFMC's mAP, AUC and accuracy, plus calibration (ECE, Brier, reliability curve).

Plain functions over array-likes, in the style of :mod:`sklearn.metrics`. Scores are probabilities already:
sigmoid outputs for multi-label tasks, softmax outputs for multi-class tasks. Every metric is returned as a
fraction in [0, 1]; tables multiply by 100. Shape mistakes raise :class:`medpeft.errors.UserError`.

Conventions for the arguments:

- multi-label: ``scores`` and ``targets`` both have shape (n, C); targets are 0/1 per (sample, class).
- multi-class: ``scores`` has shape (n, C); ``targets`` (or ``labels``) are integer labels of shape (n,).
"""

import numpy as np
from sklearn.metrics import roc_auc_score

from medpeft.errors import UserError


def _scores_2d(scores):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise UserError(f"scores must have shape (n, C) with n >= 1, got shape {scores.shape}")
    return scores


def _multilabel(scores, targets):
    scores = _scores_2d(scores)
    targets = np.asarray(targets)
    if targets.shape != scores.shape:
        raise UserError(f"multi-label targets must have the shape of scores {scores.shape}, got {targets.shape}")
    return scores, targets


def _multiclass(scores, labels):
    scores = _scores_2d(scores)
    labels = np.asarray(labels)
    if labels.shape != (scores.shape[0],):
        raise UserError(
            f"labels must have shape ({scores.shape[0]},) to match scores {scores.shape}, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise UserError(
            f"labels must be integers in [0, {scores.shape[1] - 1}], got {labels.dtype} values "
            f"from {labels.min()} to {labels.max()}"
        )
    return scores, labels


def average_precision(scores, target):
    """Average precision of one class, exactly as mmcls 0.25 ``average_precision`` (used by MedFMC).

    Samples are ranked by ``np.argsort(-scores)`` (ties keep the order that sort gives them; they are not
    grouped as in :func:`sklearn.metrics.average_precision_score`). With rank i = 1..n in that order::

        prec@i = TP(<= i) / N(<= i)
        AP     = sum over positive ranks i of prec@i / max(P, eps),   eps = np.finfo(np.float32).eps

    where TP(<= i) counts positives (label 1) and N(<= i) counts non-difficult samples (label != -1) among
    the first i, and P is the number of positives. Labels of -1 ("difficult") are neither positives nor
    counted in N. A class without positives has AP 0.

    Parameters
    ----------
    scores : array-like of shape (n,)
    target : array-like of shape (n,), values in {1, 0, -1}

    Returns
    -------
    float in [0, 1]
    """
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target)
    if scores.ndim != 1 or scores.shape != target.shape or scores.size == 0:
        raise UserError(
            f"scores and target must be non-empty 1-d arrays of one length, "
            f"got shapes {scores.shape} and {target.shape}"
        )
    ranked = target[np.argsort(-scores)]
    positive = ranked == 1
    tp = np.cumsum(positive)
    counted = np.cumsum(ranked != -1)
    precision = tp[positive] / counted[positive]
    return float(precision.sum() / max(tp[-1], np.finfo(np.float32).eps))


def mean_ap(scores, targets):
    """Mean average precision over all C classes (mmcls 0.25 ``mAP``, MedFMC's chest and endo metric).

    The mean of :func:`average_precision` over every class column, classes without positives included
    (they contribute AP 0; e.g. the Endo test list has no tumour positives, so its mAP is at most 0.75).

    Parameters
    ----------
    scores : array-like of shape (n, C)
    targets : array-like of shape (n, C), values in {1, 0, -1}

    Returns
    -------
    float in [0, 1]
    """
    scores, targets = _multilabel(scores, targets)
    return float(np.mean([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]))


def _mean_class_auc(onehot, scores, undefined):
    """Mean of the per-column ROC-AUCs of 0/1 targets ``onehot`` (n, K) against ``scores`` (n, K)."""
    if undefined not in ("skip", "medfmc"):
        raise UserError(f"undefined must be 'skip' or 'medfmc', got {undefined!r}")
    aucs = []
    for c in range(onehot.shape[1]):
        if np.unique(onehot[:, c]).size == 2:
            aucs.append(roc_auc_score(onehot[:, c], scores[:, c]))
        elif undefined == "medfmc":
            if c == 0:
                raise UserError(
                    "AUC of class 0 is undefined (its targets have a single value) and "
                    "undefined='medfmc' has no previous class to repeat; use undefined='skip'"
                )
            aucs.append(aucs[-1])
    return float(np.mean(aucs)) if aucs else float("nan")


def auc(scores, targets, multilabel, undefined="skip"):
    """Mean per-class ROC-AUC (MedFMC's ``AUC_multilabel`` and ``AUC_multiclass``).

    - ``multilabel=True``: scores and targets of shape (n, C), targets 0/1. The mean over classes c of
      ``roc_auc_score(targets[:, c], scores[:, c])``.
    - ``multilabel=False``, C == 2: targets are integer labels of shape (n,); the ordinary binary ROC-AUC of
      ``scores[:, 1]`` (for softmax scores this equals MedFMC's one-vs-rest mean, which also re-applies a
      softmax; softmax is monotone for two classes).
    - ``multilabel=False``, C > 2: the mean over classes c of the one-vs-rest AUC of ``scores[:, c]`` against
      ``labels == c`` (no second softmax is applied).

    A class whose targets take a single value (no positives, or all positive) has no AUC. ``undefined`` says
    what to do with it:

    - ``"skip"`` (default): average over the classes with a defined AUC only; nan if there are none.
    - ``"medfmc"``: reproduce the official MedFMC code, which swallows the error and repeats the previous
      class's AUC (on the Endo test list the tumour AUC equals the polyp AUC). If class 0 is undefined the
      official code crashes; here it raises :class:`UserError`. For C == 2 the binary AUC counts as class 0.

    Returns
    -------
    float in [0, 1], or nan when no class has a defined AUC under ``"skip"``.
    """
    if multilabel:
        scores, targets = _multilabel(scores, targets)
        return _mean_class_auc(targets, scores, undefined)
    scores, labels = _multiclass(scores, targets)
    if scores.shape[1] == 2:
        return _mean_class_auc((labels == 1)[:, None].astype(int), scores[:, 1:], undefined)
    onehot = (labels[:, None] == np.arange(scores.shape[1])).astype(int)
    return _mean_class_auc(onehot, scores, undefined)


def accuracy(scores, labels):
    """Top-1 accuracy: the fraction of samples whose ``argmax(scores)`` equals the label.

    Ties between classes go to the lowest class index, as :func:`numpy.argmax` (and mmcls) break them.

    Parameters
    ----------
    scores : array-like of shape (n, C)
    labels : array-like of int, shape (n,)

    Returns
    -------
    float in [0, 1]
    """
    scores, labels = _multiclass(scores, labels)
    return float(np.mean(scores.argmax(axis=1) == labels))


def _calibration_pairs(scores, targets, multilabel):
    """Flatten to (probability, outcome) pairs: the binning unit of ECE and the reliability curve."""
    if multilabel:
        scores, targets = _multilabel(scores, targets)
        prob, outcome = scores.ravel(), targets.ravel().astype(np.float64)
    else:
        scores, labels = _multiclass(scores, targets)
        prob, outcome = scores.max(axis=1), (scores.argmax(axis=1) == labels).astype(np.float64)
    if prob.min() < 0 or prob.max() > 1:
        raise UserError(f"scores must be probabilities in [0, 1], got values from {prob.min()} to {prob.max()}")
    return prob, outcome


def reliability_curve(scores, targets, multilabel, n_bins=15):
    """Per-bin mean confidence, accuracy and count, for reliability diagrams; the binning of the ECE.

    Bins are equal-width over [0, 1]: bin i is (i/n_bins, (i+1)/n_bins], and a probability of exactly 0 goes
    into bin 0. What is binned:

    - multi-class: one pair per sample, confidence = max_c p_c and outcome = [argmax_c p_c == label]
      (top-label calibration).
    - multi-label: one pair per (sample, class), confidence = p and outcome = the 0/1 label.

    Returns
    -------
    bin_confidence : ndarray of shape (n_bins,), mean confidence in each bin (nan where the bin is empty)
    bin_accuracy : ndarray of shape (n_bins,), mean outcome in each bin (nan where the bin is empty)
    bin_count : ndarray of int, shape (n_bins,), pairs per bin; sums to n (multi-class) or n*C (multi-label)
    """
    prob, outcome = _calibration_pairs(scores, targets, multilabel)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], prob, side="left")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=prob, minlength=n_bins) / count
        acc = np.bincount(bins, weights=outcome, minlength=n_bins) / count
    return confidence, acc, count


def expected_calibration_error(scores, targets, multilabel, n_bins=15):
    """Expected calibration error with equal-width bins (Guo et al., 2017).

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over the non-empty bins of :func:`reliability_curve`:

    - multi-class (top-label ECE): N = n samples, conf = mean of max_c p_c in the bin, acc = fraction of the
      bin's samples whose argmax equals the label.
    - multi-label: every (sample, class) probability is a binary prediction of "label = 1"; N = n*C,
      conf = mean probability in the bin, acc = mean label in the bin.

    Returns
    -------
    float in [0, 1]; 0 means perfectly calibrated at this binning.
    """
    confidence, acc, count = reliability_curve(scores, targets, multilabel, n_bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(acc[filled] - confidence[filled])) / count.sum())


def brier_score(scores, targets, multilabel):
    """Brier score (mean squared error of the probabilities; lower is better).

    - multi-class: ``mean_i sum_c (p_ic - onehot(label_i)_c)^2`` (in [0, 2]; [0, 1] is not guaranteed).
    - multi-label: ``mean_{i,c} (p_ic - y_ic)^2`` over all n*C entries (in [0, 1]).
    """
    if multilabel:
        scores, targets = _multilabel(scores, targets)
        return float(np.mean((scores - targets) ** 2))
    scores, labels = _multiclass(scores, targets)
    onehot = labels[:, None] == np.arange(scores.shape[1])
    return float(np.mean(np.sum((scores - onehot) ** 2, axis=1)))


def task_metrics(scores, targets, multilabel, undefined="skip"):
    """The metrics reported for a task, as fractions.

    Multi-label: ``{"mAP", "AUC", "ECE", "Brier"}``; multi-class: ``{"accuracy", "AUC", "ECE", "Brier"}``.
    ``undefined`` is passed to :func:`auc` (use ``"medfmc"`` to reproduce the official AUC numbers).
    """
    first = {"mAP": mean_ap(scores, targets)} if multilabel else {"accuracy": accuracy(scores, targets)}
    return {
        **first,
        "AUC": auc(scores, targets, multilabel, undefined),
        "ECE": expected_calibration_error(scores, targets, multilabel),
        "Brier": brier_score(scores, targets, multilabel),
    }
