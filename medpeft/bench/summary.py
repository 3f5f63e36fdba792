"""A bench's tables: ``summary.csv`` (one row per method × task × shot) and ``summary.md`` (what a paper shows).

Only selected runs count (one per cell: the validation-chosen candidate, or the only run): mean and sample std
(ddof=1) of every test metric over experiments and seeds, and of the conformal sets' coverage, mean size and
singleton rate where every run of a row has them.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..data import MEDFMC_TASKS
from ..files import write_text
from ..record import RunRecord, candidate_tag, shots_order
from ..stats import format_mean_std, mean_std
from ..task_kinds import get_kind

PAPER_CELLS = {(t, k) for t in MEDFMC_TASKS for k in (1, 5, 10)}


def changed_by_calibration(task) -> tuple[str, ...]:
    """The test metrics temperature scaling changes: the task kind's
    (:meth:`~medpeft.task_kinds.TaskKind.changed_by_calibration`)."""
    return get_kind(task.kind).changed_by_calibration(task)


def aggregate(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (label, task, shots) over the selected records with test metrics."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.selected and r.test:
            groups.setdefault((r.spec.label, r.spec.task, r.spec.shots), []).append(r)
    rows = []
    for (label, task, shots), group in groups.items():
        first = group[0]
        row = {
            "label": label,
            "method": first.spec.method,
            "options": json.dumps(_base_options(group)),
            "task": task,
            "shots": shots,
            "n_runs": len(group),
            "report_metric": first.task.report_metric,
            "chosen": chosen_summary(group),
            "refit": any(r.spec.refit for r in group),
        }
        for name in sorted(first.test, key=str.lower):  # one column order, fresh or restored from runs.jsonl
            _mean_std(row, name, [g.test[name] for g in group])
        calibrated = [g.result.calibration for g in group if g.result.calibration and g.result.calibration.test]
        if len(calibrated) == len(group):
            _mean_std(row, "temperature", [c.temperature for c in calibrated])
            for name in changed_by_calibration(first.task):
                if name in first.test:
                    _mean_std(row, f"{name}_cal", [c.test[name] for c in calibrated])
        conformal = [g.result.conformal for g in group if g.result.conformal is not None and g.result.conformal.test]
        if len(conformal) == len(group):
            row["conformal"] = "; ".join(dict.fromkeys(conformal_label(c) for c in conformal))
            for name in CONFORMAL_METRICS:
                _mean_std(row, f"conformal_{name}", [c.test[name] for c in conformal])
        params = sorted({g.result.trainable_params for g in group})
        row["trainable_params"] = params[0] if len(params) == 1 else f"{params[0]}-{params[-1]}"
        row["time_s"] = float(np.mean([sum(g.result.time_s.values()) for g in group]))
        for name in ("peak_memory_mb", "added_memory_mb"):
            values = [getattr(g.result, name) for g in group if getattr(g.result, name) is not None]
            row[name] = max(values) if values else float("nan")
        rows.append(row)
    return rows


#: What a summary shows of conformal sets (:mod:`medpeft.conformal`).
CONFORMAL_METRICS = ("coverage", "mean_set_size", "singleton_rate")


def conformal_label(conformal) -> str:
    """A conformal result's settings in a few words: ``aps α=0.1 Mondrian randomised after temperature``."""
    return " ".join(
        [conformal.method, f"α={conformal.alpha:g}"]
        + (["Mondrian"] if conformal.mondrian else [])
        + (["randomised"] if conformal.randomized else [])
        + ([f"after {conformal.after}"] if conformal.after else [])
    )


def _mean_std(row: dict[str, Any], name: str, values: list[float]) -> None:
    row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)


def _base_options(group: list[RunRecord]) -> dict[str, Any]:
    """The options the group's runs share (searched values left out)."""
    first = group[0].spec
    return {k: v for k, v in first.options.items() if k not in first.candidate}


def chosen_summary(group: list[RunRecord]) -> str:
    """The chosen values over the group's runs with their counts: ``prompt_length=50 ×3; prompt_length=100 ×2``."""
    counts = Counter(candidate_tag(r.spec.candidate) for r in group if r.spec.candidate)
    return "; ".join(f"{tag} ×{n}" for tag, n in counts.most_common())


def write_summary(out: str | Path, records: list[RunRecord]) -> None:
    """Write ``summary.csv`` and ``summary.md`` for the selected ``records`` (nothing when there are none)."""
    rows = aggregate(records)
    if not rows:
        return
    out = Path(out)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "summary.csv", buffer.getvalue())
    write_text(out / "summary.md", summary_markdown(rows, records))


def _max(values: list[float]) -> str:
    values = [v for v in values if not np.isnan(v)]
    return f"{max(values):.0f}" if values else "–"


def _pm(mean: float, std: float, scale: float = 100) -> str:
    """A metric as the tables show it: ×100 (``scale``), two decimals."""
    return format_mean_std(mean, std, ".2f", scale)


def _params(value) -> str:
    return f"{value:,}" if isinstance(value, int) else value.replace("-", "–")


def summary_markdown(rows: list[dict[str, Any]], records: list[RunRecord]) -> str:
    """The method × (task, shots) table of the reported metric with an average, the chosen values, every metric."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cells = sorted({(r["task"], r["shots"]) for r in rows}, key=lambda c: (c[0], shots_order(c[1])))
    by = {(r["label"], r["task"], r["shots"]): r for r in rows}
    metric_of = {r["task"]: r["report_metric"] for r in rows}
    avg_name = "Avg (paper's 9)" if set(cells) == PAPER_CELLS else f"Avg ({len(cells)})"
    head = [f"{t} {k}-shot ({metric_of[t]})" for t, k in cells]
    lines = [
        "# Benchmark summary",
        "",
        "Test metrics ×100, mean ± sample std over experiments and seeds, of the selected run of each cell (the",
        "candidate with the best validation score where a method searches; the test set never chooses). The",
        "average is the plain mean of the cell means (the paper's 9-task average when the grid is MedFMC ×",
        "1/5/10-shot); it is left out for a method missing a cell. Time: mean wall time per run (training, validation",
        "and test); memory: the most a run added to its process (its peak minus the level at its start; the process",
        "peaks are in summary.csv).",
        "",
        "| method | " + " | ".join(head) + f" | {avg_name} | trainable | time/run (s) | added mem (MB) |",
        "|---|" + "---|" * (len(cells) + 4),
    ]
    for label in labels:
        present = [by.get((label, t, k)) for t, k in cells]
        values = [
            _pm(r[f"{metric_of[t]}_mean"], r[f"{metric_of[t]}_std"]) if r else "–" for r, (t, _) in zip(present, cells)
        ]
        avg = (
            f"{100 * np.mean([r[f'{metric_of[t]}_mean'] for r, (t, _) in zip(present, cells)]):.2f}"
            if all(present)
            else "–"
        )
        some = next(r for r in present if r)
        name = label + (" (refit on train+val)" if some["refit"] else "")
        lines.append(
            f"| {name} | " + " | ".join(values) + f" | {avg} | {_params(some['trainable_params'])} | "
            f"{np.mean([r['time_s'] for r in present if r]):.1f} | "
            f"{_max([r['added_memory_mb'] for r in present if r])} |"
        )
    lines += chosen_markdown(records, cells)
    metric_names = list(
        dict.fromkeys(k[:-5] for r in rows for k in r if k.endswith("_mean") and not k.startswith("conformal_"))
    )
    pixels = {m for r in records for m in get_kind(r.task.kind).unscaled_metrics}
    unscaled = pixels | {"temperature"}  # a distance in pixels (HD95), a factor (T): not ×100
    lines += [
        "",
        "## Every metric",
        "",
        "| method | task | shots | runs | " + " | ".join(metric_names) + " |",
        "|---|---|---|---|" + "---|" * len(metric_names),
    ]
    for r in sorted(rows, key=lambda r: (labels.index(r["label"]), r["task"], shots_order(r["shots"]))):
        values = [
            _pm(r.get(f"{m}_mean", float("nan")), r.get(f"{m}_std", float("nan")), 1 if m in unscaled else 100)
            for m in metric_names
        ]
        lines.append(f"| {r['label']} | {r['task']} | {r['shots']} | {r['n_runs']} | " + " | ".join(values) + " |")
    if pixels & set(metric_names):
        lines += ["", f"{', '.join(sorted(pixels & set(metric_names)))}: in pixels, not ×100."]
    if any(name.endswith("_cal") for name in metric_names):
        lines += [
            "",
            "`ECE_cal`, `Brier_cal`: the test metrics after temperature scaling fitted on validation "
            "(`calibrate: temperature`); `temperature`: the fitted T (as is, not ×100).",
        ]
    lines += conformal_markdown(rows, labels)
    lines += diverged_markdown(records)
    lines += ["", "The calibration analysis of these runs: `medpeft analyze OUT --out OUT/analysis`."]
    return "\n".join(lines) + "\n"


def conformal_markdown(rows: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """The rows' conformal sets: coverage and singleton rate ×100 and the mean set size, mean ± std over runs."""
    rows = [r for r in rows if "conformal" in r]
    if not rows:
        return []
    lines = [
        "",
        "## Conformal prediction",
        "",
        "Prediction sets calibrated on each run's validation images: the share of test images whose set holds "
        "the true class (×100; multi-label: of image × label sets holding the label's state), the mean set "
        "size, and the share of sets with one class (×100).",
        "",
        "| method | task | shots | runs | conformal | coverage | mean set size | singletons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (labels.index(r["label"]), r["task"], shots_order(r["shots"]))):
        size = format_mean_std(r["conformal_mean_set_size_mean"], r["conformal_mean_set_size_std"], ".3f")
        lines.append(
            f"| {r['label']} | {r['task']} | {r['shots']} | {r['n_runs']} | {r['conformal']} | "
            f"{_pm(r['conformal_coverage_mean'], r['conformal_coverage_std'])} | {size} | "
            f"{_pm(r['conformal_singleton_rate_mean'], r['conformal_singleton_rate_std'])} |"
        )
    return lines


def diverged_markdown(records: list[RunRecord]) -> list[str]:
    """The runs whose training loss stopped being finite (never selected), with the epoch."""
    diverged = [r for r in records if r.result.diverged_epoch is not None]
    if not diverged:
        return []
    return [
        "",
        "## Diverged",
        "",
        f"{len(diverged)} run(s) stopped at a training loss that was not finite; they are never selected:",
        "",
    ] + [f"- {r.key}: epoch {r.result.diverged_epoch}" for r in diverged]


def chosen_markdown(records: list[RunRecord], cells: list[tuple]) -> list[str]:
    """Per searched method: how often each value was chosen on validation, per task × shot (runs counted)."""
    searched = [r for r in records if r.selected and r.spec.candidate]
    if not searched:
        return []
    lines = [
        "",
        "## Chosen on validation",
        "",
        "How often each candidate was selected (by the validation score at its selected epoch), per cell.",
        "",
    ]
    for label in dict.fromkeys(r.spec.label for r in searched):
        mine = [r for r in searched if r.spec.label == label]
        counts = Counter((candidate_tag(r.spec.candidate), r.spec.task, r.spec.shots) for r in mine)
        values = sorted({tag for tag, _, _ in counts}, key=lambda tag: _tag_order(tag, mine))
        lines += [
            f"**{label}**",
            "",
            "| chosen | " + " | ".join(f"{t} {k}-shot" for t, k in cells) + " |",
            "|---|" + "---|" * len(cells),
        ]
        for tag in values:
            lines.append(f"| {tag} | " + " | ".join(str(counts.get((tag, t, k), 0) or "–") for t, k in cells) + " |")
        lines.append("")
    return lines


def _tag_order(tag: str, records: list[RunRecord]) -> tuple:
    values = next(r.spec.candidate for r in records if candidate_tag(r.spec.candidate) == tag)
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in values.values())
