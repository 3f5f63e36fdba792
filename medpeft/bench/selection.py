"""Which runs count: per cell (method entry, task, shots, experiment, seed) the candidate with the best validation
score, never the test set; or, with refit, the chosen candidate's rerun on train + val."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from ..record import RunRecord, candidate_tag


def group_cells(records: Iterable[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """Records by :attr:`~medpeft.record.RunSpec.cell`, in the order given."""
    cells: dict[tuple, list[RunRecord]] = {}
    for record in records:
        cells.setdefault(record.spec.cell, []).append(record)
    return cells


def choose(candidates: list[RunRecord], order: Callable[[RunRecord], int] | None = None) -> RunRecord | None:
    """The candidate with the highest ``val_best`` (the task's selection metric on validation at the selected
    epoch); ties (common on few-shot validation sets: 20 images give accuracy in steps of 5 %) go to the higher
    :attr:`~medpeft.data.TaskSpec.tiebreak_metric` on validation at the selected epoch, then to the first in grid
    order (``order``: a candidate's position; default: by its values). None when no candidate has a finite score;
    a diverged run never has one."""
    rank = order or (lambda r: candidate_tag(r.spec.candidate))
    scored = [r for r in candidates if not r.spec.refit and _finite(r.result.val_best)]
    if not scored:
        return None
    best = max(r.result.val_best for r in scored)
    tied = [r for r in scored if r.result.val_best == best]
    second = max(_tiebreak(r) for r in tied)
    return min((r for r in tied if _tiebreak(r) == second), key=rank)


def _tiebreak(record: RunRecord) -> float:
    """The tie-break metric on validation at the record's selected epoch (-inf where absent or not finite)."""
    epoch = record.result.selected_epoch
    history = record.result.history
    row = history[epoch - 1] if epoch and epoch <= len(history) else {}
    value = row.get(f"val_{record.task.tiebreak_metric}")
    return value if _finite(value) else -math.inf


def selection(
    cell: list[RunRecord], order: Callable[[RunRecord], int] | None = None, *, refit: bool = False
) -> dict[str, bool]:
    """``{key: selected}`` for the records of one cell: the chosen candidate (:func:`choose`), or with ``refit``
    the rerun of the chosen candidate on train + val (none is selected until that rerun exists)."""
    chosen = choose(cell, order)
    if refit and chosen is not None:
        chosen = next((r for r in cell if r.spec.refit and r.spec.candidate == chosen.spec.candidate), None)
    return {r.key: chosen is not None and r.key == chosen.key for r in cell}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
