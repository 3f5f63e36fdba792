"""What a validation search found: each searched method's test and validation metric against the searched value
(the paper's prompt-length curve, Fig. 4, and embedding ways, Fig. 5), from the bench records alone."""

from __future__ import annotations

from ..record import RunRecord, shots_order
from ..stats import mean_std
from . import figures
from .plots import Gallery, slug


def search_curves(records: list[RunRecord]) -> list[dict]:
    """Per (label, searched key, task, shots): the test and validation metric (mean, std over experiments and
    seeds) at each value of the key, over every candidate of one-key searches (a search over several keys has no
    single curve and is left out)."""
    curves = []
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if len(r.spec.candidate) == 1 and not r.spec.refit and r.test:
            ((key, _),) = r.spec.candidate.items()
            groups.setdefault((r.spec.label, key, r.spec.task, r.spec.shots), []).append(r)
    for (label, key, task, shots), members in groups.items():
        values = sorted({r.spec.candidate[key] for r in members}, key=_order)
        metric = members[0].task.report_metric
        at = {v: [r for r in members if r.spec.candidate[key] == v] for v in values}
        curves.append(
            {
                "label": label,
                "key": key,
                "task": task,
                "shots": shots,
                "metric": metric,
                "values": values,
                "test": [mean_std([r.test[metric] for r in at[v]]) for v in values],
                "val": [mean_std([r.result.val_best for r in at[v]]) for v in values],
                "val_metric": members[0].task.selection_metric,
                "n_runs": len(members) // len(values),
            }
        )
    return curves


def _order(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def draw_search(gallery: Gallery, curves: list[dict]) -> None:
    """One figure per searched key: a panel per task × shot, a line per method (test solid, validation dashed)."""
    for key in dict.fromkeys(c["key"] for c in curves):
        mine = [c for c in curves if c["key"] == key]
        panels = []
        for task, shots in sorted({(c["task"], c["shots"]) for c in mine}, key=lambda ts: (ts[0], shots_order(ts[1]))):
            cell = [c for c in mine if (c["task"], c["shots"]) == (task, shots)]
            values = sorted({v for c in cell for v in c["values"]}, key=_order)
            lines = {}
            for c in cell:
                at = dict(zip(c["values"], zip(c["test"], c["val"])))
                nan = (float("nan"), float("nan"))
                lines[c["label"]] = {
                    "test": [tuple(100 * x for x in at.get(v, (nan, nan))[0]) for v in values],
                    "val": [tuple(100 * x for x in at.get(v, (nan, nan))[1]) for v in values],
                }
            panels.append(
                {
                    "title": f"{task}, {shots}-shot",
                    "xlabel": key,
                    "x": values,
                    "lines": lines,
                    "ylabel": f"test {cell[0]['metric']} / val {cell[0]['val_metric']} (×100)",
                }
            )
        path = gallery.add(
            "search",
            f"search_{slug(key)}.png",
            f"Test metric (solid, band ±std over runs) and "
            f"validation score (dashed: what chose) against the searched {key}, per method and task × "
            "shot; every candidate of the search, not only the chosen ones.",
            "validation search",
        )
        figures.search_curves(path, panels, gallery.colors, title=f"Validation search over {key}")
