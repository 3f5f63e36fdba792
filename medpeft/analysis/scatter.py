"""How well features group by class: scatter traces (Eq. 11 of Zu et al. 2024) and linear separability.

Plain functions over arrays, in the style of :mod:`sklearn.metrics`. ``features`` is (N, D); ``labels`` is either

- integer (or any comparable) class labels of shape (N,): the classes are the distinct values; or
- a 0/1 multi-label matrix of shape (N, C): each class c is its own two-group problem, positives
  (``labels[:, c] == 1``) against negatives, and the function returns the mean over the classes that have both
  positives and negatives (classes with only one group are left out). :func:`per_class` gives the values per class.

With x̄_k the mean of the N_k samples of class k and x̄ the mean of all N samples:

    Σ_W = 1/N Σ_k Σ_{i in k} (x_ki − x̄_k)(x_ki − x̄_k)ᵀ      (within-class scatter, Eq. 11)
    Σ_B = 1/N Σ_k N_k (x̄_k − x̄)(x̄_k − x̄)ᵀ                  (between-class scatter)

and Σ_W + Σ_B = Σ_T, the (biased) covariance of all samples. Traces are computed without forming D×D matrices:
tr Σ_W = 1/N Σ_k Σ_i ‖x_ki − x̄_k‖², tr Σ_B = 1/N Σ_k N_k ‖x̄_k − x̄‖².
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import UserError


def _check(features, labels) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[0] == 0:
        raise UserError(f"features must have shape (N, D) with N >= 1, got shape {features.shape}")
    if labels.ndim not in (1, 2) or labels.shape[0] != features.shape[0]:
        raise UserError(
            f"labels must have shape ({features.shape[0]},) or ({features.shape[0]}, C) to match "
            f"features {features.shape}, got {labels.shape}"
        )
    if not np.all(np.isfinite(features)):
        raise UserError("features contain nan or inf")
    return features, labels


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == k for k in np.unique(labels)]


def _trace_within(features: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for mask in _groups(labels):
        x = features[mask]
        total += float(np.sum((x - x.mean(axis=0)) ** 2))
    return total / len(features)


def _trace_between(features: np.ndarray, labels: np.ndarray) -> float:
    mean = features.mean(axis=0)
    total = 0.0
    for mask in _groups(labels):
        total += float(mask.sum() * np.sum((features[mask].mean(axis=0) - mean) ** 2))
    return total / len(features)


def _ratio(features: np.ndarray, labels: np.ndarray) -> float:
    within, between = _trace_within(features, labels), _trace_between(features, labels)
    return within / between if between > 0 else float("nan")


def per_class(fn: Callable, features: ArrayLike, labels: ArrayLike, **kwargs: Any) -> list[float]:
    """``fn`` on each class of a multi-label matrix (N, C), positives vs negatives; nan where a class has one group.

    ``fn`` is one of this module's functions (e.g. ``per_class(intra_class_scatter, X, Y)``).
    """
    features, labels = _check(features, labels)
    if labels.ndim != 2:
        raise UserError(f"per_class needs multi-label labels of shape (N, C), got {labels.shape}")
    return [
        fn(features, labels[:, c], **kwargs) if np.unique(labels[:, c]).size == 2 else float("nan")
        for c in range(labels.shape[1])
    ]


def _apply(single: Callable, features, labels, **kwargs) -> float:
    features, labels = _check(features, labels)
    if labels.ndim == 1:
        return single(features, labels, **kwargs)
    values = [
        single(features, labels[:, c], **kwargs) for c in range(labels.shape[1]) if np.unique(labels[:, c]).size == 2
    ]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def intra_class_scatter(features: ArrayLike, labels: ArrayLike) -> float:
    """Trace of the within-class scatter matrix Σ_W (Eq. 11 of Zu et al. 2024); lower means tighter classes.

    ``tr Σ_W = tr( 1/N Σ_k Σ_{i in class k} (x_ki − x̄_k)(x_ki − x̄_k)ᵀ ) = 1/N Σ_k Σ_i ‖x_ki − x̄_k‖²``

    over all N samples, x̄_k the mean of class k. Multi-label (N, C) labels: the mean over classes c (with both
    groups) of the value for positives vs negatives of c. In the units of the features squared: compare it
    across feature spaces of the same scale only (see :func:`scatter_ratio` for a scale-free number).

    Parameters
    ----------
    features : array-like of shape (N, D)
    labels : array-like of shape (N,) (class labels) or (N, C) (0/1 multi-label)

    Returns
    -------
    float >= 0
    """
    return _apply(_trace_within, features, labels)


def inter_class_scatter(features: ArrayLike, labels: ArrayLike) -> float:
    """Trace of the between-class scatter matrix Σ_B; higher means class means further apart.

    ``tr Σ_B = tr( 1/N Σ_k N_k (x̄_k − x̄)(x̄_k − x̄)ᵀ ) = 1/N Σ_k N_k ‖x̄_k − x̄‖²``

    with x̄_k the mean of the N_k samples of class k and x̄ the mean of all N samples. Multi-label as
    :func:`intra_class_scatter`. ``intra_class_scatter + inter_class_scatter`` is the total variance of the features.

    Returns
    -------
    float >= 0 (0 for a single class)
    """
    return _apply(_trace_between, features, labels)


def scatter_ratio(features: ArrayLike, labels: ArrayLike) -> float:
    """``tr Σ_W / tr Σ_B``: within-class over between-class scatter; lower is better, and scale-free.

    Multiplying the features by a constant leaves it unchanged, so it compares feature spaces of different
    scale (frozen vs fine-tuned). Multi-label: the mean over classes of the per-class ratio. nan when the
    class means coincide (tr Σ_B = 0).
    """
    return _apply(_ratio, features, labels)


def _separability(features: np.ndarray, labels: np.ndarray, n_splits: int, C: float, seed: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, counts = np.unique(labels, return_counts=True)
    folds = min(n_splits, int(counts.min()))
    if len(counts) < 2 or folds < 2:
        return float("nan")
    predicted = np.empty_like(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(features, labels):
        solver = "liblinear" if len(counts) == 2 else "lbfgs"  # same L2 logistic loss; liblinear is ~10x faster
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, class_weight="balanced", solver=solver, max_iter=2000)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features[train], labels[train])
        predicted[test] = model.predict(features[test])
    return float(balanced_accuracy_score(labels, predicted))


def linear_separability(
    features: ArrayLike, labels: ArrayLike, *, n_splits: int = 5, C: float = 1.0, seed: int = 0
) -> float:
    """How linearly separable the classes are: cross-validated balanced accuracy of a logistic regression.

    Stratified k-fold (shuffled with ``seed``) with ``k = min(n_splits, N_min)``, N_min the size of the smallest
    class, so every fold holds every class. Each fold fits ``StandardScaler`` + ``LogisticRegression(C,
    class_weight="balanced")`` on the other folds; the out-of-fold predictions of all N samples are scored with
    the balanced accuracy (mean recall over classes), so chance is 1/K whatever the class sizes (0.5 for the
    per-class problems of multi-label tasks, which are very unbalanced). 1.0 means every sample is classified
    correctly by a linear model trained without it.

    Multi-label (N, C) labels: the mean over classes (with both groups) of positives vs negatives.

    Returns
    -------
    float in [0, 1]; nan when fewer than 2 classes or the smallest class has fewer than 2 samples.
    """
    if n_splits < 2:
        raise UserError(f"n_splits={n_splits} must be at least 2")
    return _apply(_separability, features, labels, n_splits=n_splits, C=C, seed=seed)


def class_statistics(features: ArrayLike, labels: ArrayLike, *, n_splits: int = 5, seed: int = 0) -> dict:
    """All of this module's numbers for one feature set: a JSON-ready dict (nan becomes None).

    Keys ``intra_class_scatter``, ``inter_class_scatter``, ``scatter_ratio``, ``linear_separability`` (as the
    functions of the same names) and ``total_scatter`` (tr Σ_T = tr Σ_W + tr Σ_B, the total variance); for
    multi-label labels also ``per_class``: each of the four numbers per class (None where a class lacks
    positives or negatives), whose mean over the defined classes is the top-level value.
    """
    features, labels = _check(features, labels)
    singles = {
        "intra_class_scatter": _trace_within,
        "inter_class_scatter": _trace_between,
        "scatter_ratio": _ratio,
        "linear_separability": lambda x, y: _separability(x, y, n_splits=n_splits, C=1.0, seed=seed),
    }
    stats: dict = {}
    if labels.ndim == 1:
        stats = {name: _none(fn(features, labels)) for name, fn in singles.items()}
    else:
        both = [np.unique(labels[:, c]).size == 2 for c in range(labels.shape[1])]
        per = {
            name: [_none(fn(features, labels[:, c])) if ok else None for c, ok in enumerate(both)]
            for name, fn in singles.items()
        }
        for name, values in per.items():
            defined = [v for v in values if v is not None]
            stats[name] = float(np.mean(defined)) if defined else None
        stats["per_class"] = per
    stats["total_scatter"] = float(np.sum((features - features.mean(axis=0)) ** 2) / len(features))
    return stats


def _none(value: float):
    return None if value is None or np.isnan(value) else float(value)
