"""The study's coverage / set-size table from kept logits: per method × task × shots, conformal coverage and mean set
size at each α and score, before and after temperature scaling (no training: :mod:`medpeft.posthoc`)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import CalibrationWarning
from ..conformal import ConformalConfig, ConformalWarning
from ..posthoc import LOGITS_FILE, KeptLogits, calibration_step, conformal_of
from ..record import RunRecord, read_record, shots_order


def kept_runs(run_dirs) -> tuple[list[tuple[RunRecord, KeptLogits]], list[str]]:
    """(record, kept logits) of every run directory that has ``logits.npz``, and the directories that have not."""
    runs, missing = [], []
    for run_dir in map(Path, run_dirs):
        if (run_dir / LOGITS_FILE).is_file():
            runs.append((read_record(run_dir), KeptLogits.load(run_dir / LOGITS_FILE)))
        else:
            missing.append(str(run_dir))
    return runs, missing


def coverage_table(
    runs: list[tuple[RunRecord, KeptLogits]], alphas=(0.1, 0.2), scores=("lac", "aps")
) -> list[dict[str, Any]]:
    """One row per (label, task, shots, α, score): the runs' mean test coverage and mean set size, of sets on the
    softmax probabilities (``before``) and on the temperature-scaled ones (``after``, T fitted on each run's
    validation), with the number of runs. Runs without a labelled test list are left out."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for record, kept in runs:
        if kept.test is None or kept.test_labels is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (CalibrationWarning, ConformalWarning))
            calibrated = calibration_step(kept, record.task, "temperature")
            for alpha, score in itertools.product(alphas, scores):
                values = {}
                for when, calibration in (("before", None), ("after", calibrated)):
                    test = conformal_of(
                        kept, record.task, ConformalConfig(score, alpha), calibration=calibration, seed=record.spec.seed
                    ).test
                    values.update({f"coverage_{when}": test["coverage"], f"set_size_{when}": test["mean_set_size"]})
                key = (record.spec.label, record.spec.task, record.spec.shots, alpha, score)
                groups.setdefault(key, []).append(values)
    rows = []
    for (label, task, shots, alpha, score), values in groups.items():
        row = {"label": label, "task": task, "shots": shots, "alpha": alpha, "score": score, "runs": len(values)}
        row.update({k: float(np.mean([v[k] for v in values])) for k in values[0]})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["task"], r["label"], shots_order(r["shots"]), r["alpha"], r["score"]))


def coverage_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`coverage_table` as a Markdown table (coverage ×100, mean set size, before / after T)."""
    lines = [
        "| method | task | shots | runs | α | score | coverage | set size | coverage after T | set size after T |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['task']} | {r['shots']} | {r['runs']} | {r['alpha']:g} | {r['score']} | "
            f"{100 * r['coverage_before']:.1f} | {r['set_size_before']:.2f} | "
            f"{100 * r['coverage_after']:.1f} | {r['set_size_after']:.2f} |"
        )
    return "\n".join(lines) + "\n"
