"""Split conformal prediction on kept logits: prediction sets that hold the true class with probability ≥ 1 − α.

The validation images of a run are the calibration set (Vovk et al. 2005; Angelopoulos & Bates 2021). A *score*
s(x, k) says how unusual class k is for image x; on the n validation images the scores of the true classes give

    q̂ = the ⌈(n + 1)(1 − α)⌉-th smallest score   (the ⌈(n + 1)(1 − α)⌉ / n empirical quantile, "higher")

and the set of an image is every class k with s(x, k) ≤ q̂. When ⌈(n + 1)(1 − α)⌉ > n (α < 1 / (n + 1)), no score
bounds the set: q̂ = ∞, every class is in every set, and a :class:`ConformalWarning` says the smallest α this n
allows. Exchangeable validation and test images give coverage ≥ 1 − α, and ≤ 1 − α + 1 / (n + 1) when scores do not
tie. Scores, of probabilities p (softmax; or temperature-scaled when the run asks for both):

- ``lac``: 1 − p_k (least ambiguous set-valued classifier, Sadinle et al. 2019);
- ``aps``: Σ_{j: p_j ≥ p_k} p_j, the mass of every class at least as likely as k (Romano et al. 2020); randomised:
  Σ_{j: p_j > p_k} p_j + u · p_k with u ~ U(0, 1) drawn once per image. Tied classes share one score, so they enter
  a set together. The non-randomised score is computed as 1 − Σ_{j: p_j < p_k} p_j (the same for probabilities
  that sum to 1), so that the least likely class scores exactly 1 whatever the rounding of the sum;
- ``raps``: the APS score plus λ · (r_k − k_reg)⁺, r_k the rank of k (Angelopoulos et al. 2021): 1 + #{p_j > p_k}
  randomised, #{p_j ≥ p_k} not.

``mondrian`` (class-conditional) takes one q̂ per class, from the validation images of that class, so coverage holds
within every class. Multi-label tasks get per-label sets: each label is its own two-class problem (absent, present)
with probabilities (1 − σ, σ), its own q̂ (Mondrian: per label and state) and a set ⊆ {absent, present}.
Randomised scores draw u from ``numpy.random.default_rng([seed, 0])`` for validation and ``[seed, 1]`` for test.

LAC and APS scores are ranked by their log-odds, log s − log(1 − s), with s and 1 − s each summed from the
probabilities (1 − s = p_k for LAC; Σ_{p_j < p_k} p_j, plus (1 − u) · p_k randomised, for APS): the order of scores
within 10⁻³⁰⁸ of 0 or 1, which float64 rounds to 0 or 1 and would tie, stays exact (a run with logit margins of
hundreds keeps sets as small as exact arithmetic gives them, and temperature scaling cannot change a binary task's
LAC sets, as in exact arithmetic). The record's ``threshold`` is q̂ on that scale (RAPS: q̂ itself), and ``qhat`` the
score of the same calibration image.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import Notice, ParameterError, UserError

SCORES = ("lac", "aps", "raps")
#: Slack on (n + 1)(1 − α) before its ceiling: 20 · (1 − 0.1) is 18.000000000000004 in floating point.
_EPS = 1e-9
_LARGEST = float(np.finfo(np.float64).max)


class ConformalWarning(Notice):
    """Too few validation images for the asked α: every class is in every set."""


@dataclass
class ConformalConfig:
    """What to compute: the score, α, randomised or not, Mondrian or not, and RAPS's λ and k_reg."""

    method: str = "lac"
    alpha: float = 0.1
    randomized: bool = False
    mondrian: bool = False
    raps_lambda: float = 0.01
    raps_k_reg: int = 1

    def __post_init__(self):
        if self.method not in SCORES:
            raise ParameterError(
                "conformal", "{conformal} {value!r}: choose from {choices}", value=self.method, choices=list(SCORES)
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ParameterError(
                "alpha", "{alpha} {value!r} must be a number strictly between 0 and 1 (e.g. 0.1)", value=self.alpha
            )
        if (
            isinstance(self.raps_lambda, bool)
            or not isinstance(self.raps_lambda, (int, float))
            or not self.raps_lambda >= 0
        ):
            raise ParameterError("raps_lambda", "{raps_lambda} {value!r} must be a number ≥ 0", value=self.raps_lambda)
        if isinstance(self.raps_k_reg, bool) or not isinstance(self.raps_k_reg, int) or self.raps_k_reg < 0:
            raise ParameterError("raps_k_reg", "{raps_k_reg} {value!r} must be an integer ≥ 0", value=self.raps_k_reg)
        self.alpha, self.raps_lambda = float(self.alpha), float(self.raps_lambda)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConformalConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise UserError(f"unknown conformal option(s) {unknown}; valid: {valid}")
        return cls(**values)


@dataclass
class Conformal:
    """A conformal result: the settings, the calibration size, q̂ (a number; per class with Mondrian; per label for
    multi-label, per label and state with both; ∞ where n is too small), what ran before it (``after``:
    ``temperature`` or None) and the test set's coverage, mean set size, singleton rate and coverage per class."""

    method: str
    alpha: float
    n_cal: int
    qhat: Any
    randomized: bool = False
    mondrian: bool = False
    raps_lambda: float | None = None
    raps_k_reg: int | None = None
    after: str | None = None
    note: str | None = None
    test: dict[str, Any] | None = None
    threshold: Any = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Conformal:
        """From its JSON form (where ∞ was written as null; records made before ``threshold`` have none)."""
        values = {**values, "qhat": _infinite_nulls(values["qhat"])}
        if values.get("threshold") is not None:
            values["threshold"] = _infinite_nulls(values["threshold"])
        return cls(**values)

    @property
    def config(self) -> ConformalConfig:
        return ConformalConfig(
            self.method,
            self.alpha,
            self.randomized,
            self.mondrian,
            0.01 if self.raps_lambda is None else self.raps_lambda,
            1 if self.raps_k_reg is None else self.raps_k_reg,
        )


def _infinite_nulls(value):
    if value is None:
        return math.inf
    if isinstance(value, list):
        return [_infinite_nulls(v) for v in value]
    return value


def quantile_rank(n: int, alpha: float) -> int:
    """⌈(n + 1)(1 − α)⌉: the rank of q̂ among n calibration scores (> n: none, q̂ = ∞)."""
    return math.ceil((n + 1) * (1 - alpha) - _EPS)


def conformal_quantile(scores: ArrayLike, alpha: float) -> float:
    """q̂ of calibration ``scores``: the :func:`quantile_rank`-th smallest, or ∞ when that rank exceeds n."""
    scores = np.asarray(scores, dtype=np.float64)
    rank = quantile_rank(len(scores), alpha)
    return math.inf if rank > len(scores) else float(np.sort(scores)[rank - 1])


def class_scores(probs: ArrayLike, config: ConformalConfig, u: np.ndarray | None = None) -> np.ndarray:
    """s(x, k) of every image and class (n, K) from probabilities (n, K); ``u`` (n,) for randomised scores."""
    return _score_parts(probs, config, u)[0]


def _score_parts(probs, config: ConformalConfig, u) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The scores (n, K) and, for LAC and APS, s and 1 − s each summed from the probabilities (exact near 0)."""
    p = np.asarray(probs, dtype=np.float64)
    if config.method == "lac":
        return 1 - p, (p[:, None, :] * ~np.eye(p.shape[1], dtype=bool)).sum(-1), p
    greater = p[:, None, :] > p[:, :, None]  # [i, k, j]: p_j > p_k
    above = (p[:, None, :] * greater).sum(-1)
    below = (p[:, None, :] * (p[:, None, :] < p[:, :, None])).sum(-1)
    if config.randomized:
        u = np.asarray(u, dtype=np.float64)[:, None]
        scores, rest, rank = above + u * p, below + (1 - u) * p, 1 + greater.sum(-1)
        mass = scores
    else:
        at_least = p[:, None, :] >= p[:, :, None]
        scores, mass, rest, rank = 1 - below, (p[:, None, :] * at_least).sum(-1), below, at_least.sum(-1)
    if config.method == "raps":
        return scores + config.raps_lambda * np.maximum(rank - config.raps_k_reg, 0), None, None
    return scores, mass, rest


def _keys(probs, config: ConformalConfig, u) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ranking keys): log s − log(1 − s) from the summed parts (LAC, APS), or the scores (RAPS)."""
    scores, mass, rest = _score_parts(probs, config, u)
    if mass is None:
        return scores, scores
    with np.errstate(divide="ignore"):
        keys = np.log(mass) - np.log(rest)
    return scores, np.clip(keys, -_LARGEST, _LARGEST)  # a probability that underflowed: finite, for JSON


def _draws(n_shape, config: ConformalConfig, seed: int, stream: int):
    return np.random.default_rng([seed, stream]).random(n_shape) if config.randomized else None


def _quantile(scores: np.ndarray, keys: np.ndarray, alpha: float) -> tuple[float, float]:
    """(q̂, threshold): the score and the key of the calibration image whose key is the
    :func:`quantile_rank`-th smallest; (∞, ∞) when that rank exceeds n."""
    rank = quantile_rank(len(keys), alpha)
    if rank > len(keys):
        return math.inf, math.inf
    at = np.argsort(keys, kind="stable")[rank - 1]
    return float(scores[at]), float(keys[at])


def _calibrate_classes(probs, labels, config: ConformalConfig, u, names: list[str]) -> tuple[Any, Any, list[tuple]]:
    """(q̂, threshold) (one, or per class with Mondrian) of one multi-class problem, and the (group, n) too small
    for α (``names``: the class names; without Mondrian the group is the whole set)."""
    scores, keys = (a[np.arange(len(labels)), labels] for a in _keys(probs, config, u))
    if not config.mondrian:
        qhat, threshold = _quantile(scores, keys, config.alpha)
        return qhat, threshold, [] if math.isfinite(qhat) else [("all", len(scores))]
    pairs = [_quantile(scores[labels == k], keys[labels == k], config.alpha) for k in range(probs.shape[1])]
    few = [(names[k], int((labels == k).sum())) for k, (q, _) in enumerate(pairs) if not math.isfinite(q)]
    return [q for q, _ in pairs], [t for _, t in pairs], few


def _sets(probs, qhat, threshold, config: ConformalConfig, u) -> np.ndarray:
    """Classes whose key is ≤ ``threshold`` or, without one, whose score is ≤ ``qhat``."""
    scores, keys = _keys(probs, config, u)
    if threshold is None:
        return scores <= np.asarray(qhat, dtype=np.float64)
    return keys <= np.asarray(threshold, dtype=np.float64)


def _binary(probs: np.ndarray, label: int) -> np.ndarray:
    """Label ``label`` of multi-label probabilities as a two-class problem: (P(absent), P(present))."""
    return np.stack([1 - probs[:, label], probs[:, label]], axis=1)


def calibrate(
    probs: ArrayLike,
    labels: ArrayLike,
    config: ConformalConfig,
    *,
    multilabel: bool,
    classes: Sequence[Any] | None = None,
    seed: int = 0,
) -> float | list[float] | list[list[float]]:
    """q̂ from validation probabilities and labels ((n,) class indices, or (n, C) 0/1 for multi-label): a float,
    a per-class list (Mondrian), a per-label list (multi-label) or a per-label list of [absent, present] (both).
    Too few images for α: that q̂ is ∞, with one :class:`ConformalWarning` line."""
    return _calibrate(probs, labels, config, multilabel, classes, seed)[0]


def _calibrate(probs, labels, config: ConformalConfig, multilabel: bool, classes, seed: int) -> tuple[Any, Any]:
    """(q̂, threshold) as :func:`calibrate` describes q̂; the threshold is the same quantile on the ranking key."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) == 0 or len(labels) != len(probs):
        raise UserError(
            f"conformal prediction needs (n, C) validation probabilities and n labels, got {probs.shape}"
            f" and {labels.shape}"
        )
    classes = [str(c) for c in classes] if classes is not None else [str(k) for k in range(probs.shape[1])]
    u = _draws(labels.shape, config, seed, 0)
    if not multilabel:
        qhat, threshold, few = _calibrate_classes(probs, labels.astype(np.int64), config, u, classes)
    else:
        qhat, threshold, few = [], [], []
        for c, name in enumerate(classes):
            q, t, small = _calibrate_classes(
                _binary(probs, c),
                labels[:, c].astype(np.int64),
                config,
                None if u is None else u[:, c],
                [f"{name} absent", f"{name} present"],
            )
            qhat.append(q)
            threshold.append(t)
            few += small[:1] if not config.mondrian else small
    if few:
        _warn_too_few(few, len(labels), config, multilabel)
    return qhat, threshold


def prediction_sets(
    probs: ArrayLike,
    qhat: float | list[float] | list[list[float]],
    config: ConformalConfig,
    *,
    multilabel: bool,
    seed: int = 0,
    threshold: float | list[float] | list[list[float]] | None = None,
) -> np.ndarray:
    """Boolean sets: (n, K), k in the set of image i; multi-label (n, C, 2), [absent, present] of each label.
    With ``threshold`` (a :class:`Conformal`'s) the keys decide, exact where scores round to 0 or 1."""
    probs = np.asarray(probs, dtype=np.float64)
    u = _draws(probs.shape if multilabel else len(probs), config, seed, 1)
    if not multilabel:
        return _sets(probs, qhat, threshold, config, u)
    return np.stack(
        [
            _sets(
                _binary(probs, c),
                qhat[c],
                None if threshold is None else threshold[c],
                config,
                None if u is None else u[:, c],
            )
            for c in range(probs.shape[1])
        ],
        axis=1,
    )


def set_metrics(sets: np.ndarray, labels: ArrayLike, classes: Sequence[Any]) -> dict[str, Any]:
    """Coverage (the share of sets holding the true class; multi-label: of (image, label) sets holding the label's
    true state), mean set size, singleton rate and coverage per class (multi-label: per label; None where the test
    set has no image of a class)."""
    labels = np.asarray(labels).astype(np.int64)
    if sets.ndim == 2:
        covered = sets[np.arange(len(labels)), labels]
        per_class = [covered[labels == k] for k in range(sets.shape[1])]
    else:
        covered = np.take_along_axis(sets, labels[:, :, None], axis=2)[:, :, 0]
        per_class = list(covered.T)
    sizes = sets.sum(-1)
    return {
        "coverage": float(covered.mean()),
        "mean_set_size": float(sizes.mean()),
        "singleton_rate": float((sizes == 1).mean()),
        "per_class_coverage": {name: float(c.mean()) if len(c) else None for name, c in zip(classes, per_class)},
    }


def conformal_step(
    val_probs: ArrayLike,
    val_labels: ArrayLike,
    test_probs: ArrayLike,
    test_labels: ArrayLike,
    config: ConformalConfig,
    *,
    multilabel: bool,
    classes: Sequence[Any],
    seed: int = 0,
    after: str | None = None,
) -> Conformal:
    """Calibrate on validation and score the test set (``test_labels`` None: no test metrics)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConformalWarning)
        qhat, threshold = _calibrate(val_probs, val_labels, config, multilabel, classes, seed)
    note = None
    for w in caught:
        note = str(w.message)
        warnings.warn(w.message, w.category, stacklevel=2)
    test = None
    if test_labels is not None and test_probs is not None and len(test_probs):
        sets = prediction_sets(test_probs, qhat, config, multilabel=multilabel, seed=seed, threshold=threshold)
        test = set_metrics(sets, test_labels, classes)
    raps = config.method == "raps"
    return Conformal(
        config.method,
        config.alpha,
        len(val_labels),
        qhat,
        config.randomized,
        config.mondrian,
        config.raps_lambda if raps else None,
        config.raps_k_reg if raps else None,
        after,
        note,
        test,
        threshold,
    )


def _warn_too_few(few: list[tuple], n: int, config: ConformalConfig, multilabel: bool) -> None:
    """One line: which calibration groups are too small for α, the n that α needs and the smallest α each allows."""
    whole = "every label's set is {absent, present}" if multilabel else "every class is in every set"
    if not config.mondrian:
        message = (
            f"{n} validation images are too few for α = {config.alpha:g} (it needs n ≥ "
            f"{_needed(config.alpha)}; the smallest α for n = {n} is 1/(n + 1) = {1 / (n + 1):.3g}): {whole}"
        )
    else:
        smallest = min(size for _, size in few)
        groups = ", ".join(f"{name} (n = {size})" for name, size in few)
        message = (
            f"Mondrian: too few validation images for α = {config.alpha:g} (it needs n ≥ "
            f"{_needed(config.alpha)} per group) in {groups}; the smallest α for n = {smallest} is "
            f"1/(n + 1) = {1 / (smallest + 1):.3g}: those groups' classes are in every set"
        )
    warnings.warn(f"conformal: {message}", ConformalWarning, stacklevel=3)


def _needed(alpha: float) -> int:
    """The smallest n with ⌈(n + 1)(1 − α)⌉ ≤ n."""
    return math.ceil(1 / alpha - 1 - _EPS)


def temper(probs: ArrayLike, temperature: float, multilabel: bool) -> np.ndarray:
    """Probabilities of logits / T from probabilities (for lists scored without their logits, as ``predict``):
    p^(1/T) renormalised (softmax) or p^(1/T) / (p^(1/T) + (1 − p)^(1/T)) (sigmoid); exact limits at 0 and 1."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if multilabel:
            a, b = np.log(p) / temperature, np.log1p(-p) / temperature
            top = np.maximum(a, b)
            return np.exp(a - top) / (np.exp(a - top) + np.exp(b - top))
        z = np.log(p) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


__all__ = [
    "SCORES",
    "Conformal",
    "ConformalConfig",
    "ConformalWarning",
    "calibrate",
    "class_scores",
    "conformal_quantile",
    "conformal_step",
    "prediction_sets",
    "quantile_rank",
    "set_metrics",
    "temper",
]
