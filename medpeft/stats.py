"""A number over runs as every table shows it: mean ± sample std (ddof=1), computed and written in one place."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the values that are not None or nan: std nan for one value, both nan for none,
    and exactly 0 for equal values (numpy's std around its rounded mean would give ~1e-16)."""
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if np.ptp(values) else 0.0


def format_mean_std(mean: float | None, std: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    """``mean ± std``, each ``scale`` × the number in format ``spec``; the mean alone where the std is None or nan
    (one run); ``–`` where the mean is (no run)."""
    if mean is None or np.isnan(mean):
        return "–"
    if std is None or np.isnan(std):
        return f"{scale * mean:{spec}}"
    return f"{scale * mean:{spec}} ± {scale * std:{spec}}"
