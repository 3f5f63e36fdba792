"""Post-hoc calibration, fitted on the validation set after training: a registry of calibrators
(:data:`CALIBRATORS`), and temperature scaling (Guo et al., 2017).

One temperature T > 0 divides every logit. T is chosen to minimise the validation negative log-likelihood of the
training loss: softmax cross-entropy (mean over images) for single-label tasks, binary cross-entropy summed over
classes and averaged over images for multi-label ones. Dividing by T keeps the argmax and every per-class ranking,
so accuracy, AUC and mAP are unchanged; ECE, Brier and NLL change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax

from .errors import Notice, UserError
from .types import Calibration

#: The search interval of log T: T in [1e-3, 1e3].
LOG_T_BOUNDS = (-3 * np.log(10), 3 * np.log(10))


class CalibrationWarning(Notice):
    """The validation set cannot determine a temperature; T = 1 is used."""


def nll(logits, targets, multilabel: bool, temperature: float = 1.0) -> float:
    """Negative log-likelihood of ``logits / temperature``: mean softmax cross-entropy (targets: (n,) class
    indices), or binary cross-entropy summed over classes and averaged over images (targets: (n, C) 0/1)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    targets = np.asarray(targets)
    if multilabel:
        return float(-(targets * log_expit(z) + (1 - targets) * log_expit(-z)).sum(axis=1).mean())
    return float(-log_softmax(z, axis=1)[np.arange(len(z)), targets.astype(np.int64)].mean())


def _degenerate(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> str | None:
    """Why no finite temperature minimises the NLL (then it decreases all the way to T -> 0 or T -> inf)."""
    if multilabel:
        if (targets.min(axis=0) == targets.max(axis=0)).all():
            return "every class is all positive or all negative on validation"
        if ((logits > 0) == (targets == 1)).all():
            return "every validation prediction is already right"
        return None
    if len(np.unique(targets)) < 2:
        return "the validation set holds one class"
    top = logits.argmax(axis=1)
    others = np.where(np.arange(logits.shape[1]) == top[:, None], -np.inf, logits).max(axis=1)
    if ((top == targets) & (logits[np.arange(len(top)), top] > others)).all():
        return "every validation prediction is already right"
    return None


def fit_temperature(logits, targets, multilabel: bool) -> Calibration:
    """The temperature minimising the validation NLL (:func:`nll`), searched over log T in
    :data:`LOG_T_BOUNDS` (a convex problem in 1/T). A validation set that cannot determine it (one class, every
    prediction already right, or the optimum at the edge of the interval) gives T = 1 with a
    :class:`CalibrationWarning` and a ``note``."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if logits.ndim != 2 or len(logits) == 0 or len(targets) != len(logits):
        raise UserError(
            f"temperature scaling needs (n, C) logits and n targets, got {logits.shape} and {targets.shape}"
        )
    before = nll(logits, targets, multilabel)
    note = _degenerate(logits, targets, multilabel)
    if note is None:
        found = minimize_scalar(
            lambda log_t: nll(logits, targets, multilabel, float(np.exp(log_t))),
            bounds=LOG_T_BOUNDS,
            method="bounded",
            options={"xatol": 1e-6},
        )
        edge = min(abs(found.x - b) for b in LOG_T_BOUNDS) < 1e-3
        if found.success and not edge:
            t = float(np.exp(found.x))
            return Calibration("temperature", t, before, nll(logits, targets, multilabel, t))
        note = "the validation NLL has no minimum for T in [1e-3, 1e3]"
    warnings.warn(f"temperature scaling: {note}; T = 1 (no calibration)", CalibrationWarning, stacklevel=2)
    return Calibration("temperature", 1.0, before, before, note)


#: The post-hoc calibrators by name: each fits a :class:`~medpeft.types.Calibration` on validation logits and
#: targets (``fit(logits, targets, multilabel)``). A new calibrator is one entry here.
CALIBRATORS: dict[str, Callable[[np.ndarray, np.ndarray, bool], Calibration]] = {"temperature": fit_temperature}
#: Every choice of the ``calibrate`` parameter: ``none`` (no post-hoc step), then :data:`CALIBRATORS`.
CHOICES = ("none", *CALIBRATORS)


def calibrate_logits(name: str, logits, targets, multilabel: bool) -> Calibration | None:
    """The calibrator ``name`` fitted on validation ``logits`` and ``targets``; None for ``none``."""
    if name not in CHOICES:
        raise UserError(f"calibrator {name!r}: choose from {list(CHOICES)}")
    return None if name == "none" else CALIBRATORS[name](logits, targets, multilabel)
