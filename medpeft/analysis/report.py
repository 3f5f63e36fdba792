"""The analysis's tables: groups of runs (mean ± std of every number) and the Markdown report."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import format_mean_std, mean_std
from .figures import PRETRAIN

NUMBERS = ("intra_class_scatter", "inter_class_scatter", "scatter_ratio", "linear_separability", "ECE")

DEFINITIONS = {
    "features": "the test images' CLS token after the final norm: what the classification head reads",
    "intra_class_scatter": "tr Σ_W = 1/N Σ_k Σ_i ‖x_ki − x̄_k‖² (Eq. 11); lower = tighter classes; feature units²",
    "inter_class_scatter": "tr Σ_B = 1/N Σ_k N_k ‖x̄_k − x̄‖²; higher = class means further apart",
    "scatter_ratio": "tr Σ_W / tr Σ_B; lower is better; unchanged by rescaling the features",
    "linear_separability": "balanced accuracy of logistic regression, stratified k-fold "
    "(k = min(n_splits, smallest class)); chance = 1/classes",
    "ECE": "expected calibration error of the test predictions, 15 equal-width bins (pretrain: no head, none)",
    "multi-label": "each class is positives vs negatives; the number is the mean over classes having both "
    "(per class values under per_class)",
}


def _json_ms(pair: tuple[float, float]) -> dict[str, float | None]:
    return {k: None if np.isnan(v) else v for k, v in zip(("mean", "std"), pair)}


def groups(numbers: dict[str, dict[str, Any]]) -> list[dict]:
    """Mean and std of every number per (label, task, shots); pretrain rows (shots None) first per task."""
    grouped: dict[tuple, list[str]] = {}
    for name, n in numbers.items():
        grouped.setdefault((n["task"], n["shots"] is not None, n["label"], str(n["shots"])), []).append(name)
    order = {task: i for i, task in enumerate(dict.fromkeys(n["task"] for n in numbers.values()))}
    rows = []
    for (task, _, label, _), names in sorted(grouped.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        first = numbers[names[0]]
        row = {"label": label, "task": task, "shots": first["shots"], "n_runs": len(names), "runs": names}
        for number in NUMBERS:
            row[number] = _json_ms(mean_std([numbers[n][number] for n in names]))
        metric = first.get("report_metric") or "accuracy"
        row["metric"] = metric
        row["metric_value"] = _json_ms(mean_std([numbers[n].get("test_metrics", {}).get(metric) for n in names]))
        rows.append(row)
    return rows


def _fmt(pair: dict, percent: bool = False) -> str:
    """3 significant digits, or ×100 with one decimal (``percent``); ``± std`` when there are several runs."""
    return format_mean_std(pair["mean"], pair["std"], *((".1f", 100) if percent else (".3g",)))


def report_markdown(analysis: dict[str, Any]) -> str:
    """The report: what was analysed, the table of numbers, every figure with a one-line caption."""
    runs = analysis["runs"]
    n_runs = sum(1 for r in runs.values() if r["label"] != PRETRAIN)
    lines = [
        "# Feature analysis: does fine-tuning calibrate the feature distribution?",
        "",
        f"{n_runs} runs from {', '.join(f'`{s}`' for s in analysis['sources'])}, analysed on their test images "
        f"(medpeft {analysis['medpeft_version']}, {analysis['created']}). *pretrain* is the frozen backbone with no "
        "method (the same weights every run started from). Following Zu et al. 2024 (Eq. 11), a method that "
        "calibrates the feature distribution lowers the intra-class scatter and separates the classes better.",
        *[f"The benchmark tables of these runs: [{link}]({link})." for link in analysis.get("summaries", [])],
        "",
        "## Numbers",
        "",
        "Mean ± sample std over runs (experiments × seeds). Scatter in feature units²: compare the ratio and the "
        "separability across models whose features differ in scale.",
        "",
        "| model | task | shots | runs | intra-class scatter tr Σ_W | inter-class scatter tr Σ_B | ratio W/B "
        "| linear separability | test ECE ×100 | test metric ×100 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in analysis["groups"]:
        lines.append(
            f"| {g['label']} | {g['task']} | {g['shots'] if g['shots'] is not None else '–'} | {g['n_runs']} | "
            f"{_fmt(g['intra_class_scatter'])} | {_fmt(g['inter_class_scatter'])} | {_fmt(g['scatter_ratio'])} | "
            f"{_fmt(g['linear_separability'])} | {_fmt(g['ECE'], True)} | "
            + (f"{g['metric']} {_fmt(g['metric_value'], True)}" if g["metric_value"]["mean"] is not None else "–")
            + " |"
        )
    lines += ["", "Definitions:", ""] + [f"- **{k}**: {v}." for k, v in analysis["definitions"].items()]
    lines += ["", "## Figures", ""]
    section = None
    for fig in analysis["figures"]:
        if fig.get("section") != section:
            section = fig.get("section")
            lines += [f"### {section}", ""]
        lines += [f"![{fig['kind']}]({fig['file']})", "", f"*{fig['caption']}*", ""]
    lines += ["Per-run values (and per class for multi-label tasks) are in `analysis.json`.", ""]
    return "\n".join(lines)
