"""Which runs count: per cell (method entry, task, shots, experiment, seed) the candidate with the best validation
score, never the test set; or, with refit, the chosen candidate's rerun on train + val."""

from __future__ import annotations

import math
from typing import Callable, Iterable

from ..record import RunRecord, candidate_tag


def group_cells(records: Iterable[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """Records by :attr:`~medpeft.record.RunSpec.cell`, in the order given."""
    cells: dict[tuple, list[RunRecord]] = {}
    for record in records:
        cells.setdefault(record.spec.cell, []).append(record)
    return cells


def choose(candidates: list[RunRecord], order: Callable[[RunRecord], int] | None = None) -> RunRecord | None:
    """The candidate with the highest ``val_best`` (the task's selection metric on validation at the selected
    epoch); ties go to the first in grid order (``order``: a candidate's position; default: by its values).
    None when no candidate has a finite score."""
    rank = order or (lambda r: candidate_tag(r.spec.candidate))
    scored = [r for r in candidates if not r.spec.refit and _finite(r.result.val_best)]
    if not scored:
        return None
    best = max(r.result.val_best for r in scored)
    return min((r for r in scored if r.result.val_best == best), key=rank)


def selection(cell: list[RunRecord], order: Callable[[RunRecord], int] | None = None, *,
              refit: bool = False) -> dict[str, bool]:
    """``{key: selected}`` for the records of one cell: the chosen candidate (:func:`choose`), or with ``refit``
    the rerun of the chosen candidate on train + val (none is selected until that rerun exists)."""
    chosen = choose(cell, order)
    if refit and chosen is not None:
        chosen = next((r for r in cell if r.spec.refit and r.spec.candidate == chosen.spec.candidate), None)
    return {r.key: chosen is not None and r.key == chosen.key for r in cell}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
