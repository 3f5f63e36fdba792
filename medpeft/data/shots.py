"""How many training images: K of K-shot, or a fraction of the training set (``"20%"``)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def check_shots(shots) -> None:
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise UserError(f"shots must be a positive integer, got {shots!r}")


def parse_shots(shots: int | str) -> int | float:
    """K of K-shot (a positive int), or a fraction of the training set written as a percentage (``"20%"`` → 0.2)."""
    if isinstance(shots, str) and shots.strip().endswith("%"):
        try:
            fraction = float(shots.strip()[:-1]) / 100
        except ValueError:
            fraction = -1.0
        if not 0 < fraction <= 1:
            raise UserError(f"shots {shots!r}: a fraction of the training set is a percentage in (0, 100], e.g. 20%")
        return fraction
    if isinstance(shots, str) and shots.strip().isdigit():
        shots = int(shots)
    check_shots(shots)
    return int(shots)
