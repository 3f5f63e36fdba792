"""The real study's prediction sets (issue 33): keep the selected runs' logits, then the report's section.

``python studies/real/coverage.py BENCH OUT --methods linear,ept`` (from the repository root, one thread): for every
selected run of those methods in BENCH/runs.jsonl, its ``run.json`` and ``logits.npz`` go to
``OUT/kept/<label>/<cell>/<candidate>/`` (committed): copied from the bench's run directory, or, where the bench kept
no logits (runs made before medpeft kept them), from the selected candidate trained again under ``OUT/runs`` with its
committed spec (same split, seed and recipe; each cell's selection stays as committed; the kept ``run.json`` then
holds the new run's metrics, ``committed.json`` both test accuracies). Resumable: what OUT holds is not redone.

:func:`section` (called by ``report.py``): coverage and mean set size at α = 0.1 and 0.2 with LAC and APS, before and
after temperature scaling, and one paired test: EPT's set size against the temperature-scaled linear probe's."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from medpeft.analysis.conformal_table import coverage_markdown, coverage_table, kept_runs
from medpeft.analysis.paired import paired_comparison
from medpeft.bench.config import BenchConfig, read_config
from medpeft.bench.store import read_index
from medpeft.bench.worker import RunJob, execute
from medpeft.calibration import CalibrationWarning
from medpeft.conformal import ConformalConfig, ConformalWarning
from medpeft.files import write_json
from medpeft.posthoc import LOGITS_FILE, calibration_step, conformal_of
from medpeft.record import RUN_FILE, read_record

#: beside a run trained again: its test accuracy and the committed run's
COMMITTED = "committed.json"


#: the paired test's sets: LAC at α = 0.1 (90 % coverage), EPT as trained against the temperature-scaled linear probe
PAIRED = ConformalConfig("lac", 0.1)


def kept(dataset_dir: Path):
    """(record, kept logits) of every selected run whose logits are kept for ``dataset_dir``."""
    root = dataset_dir / "logits" / "kept"
    runs, _ = kept_runs(sorted(p.parent for p in root.glob(f"**/{LOGITS_FILE}")))
    return runs


def set_sizes(runs, method: str, temperature: bool) -> dict[tuple, float]:
    """Mean test set size of ``method``'s runs under :data:`PAIRED`, by cell (shots, exp)."""
    sizes = {}
    for record, logits in runs:
        if record.spec.method != method:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (CalibrationWarning, ConformalWarning))
            calibration = calibration_step(logits, record.task, "temperature") if temperature else None
            result = conformal_of(logits, record.task, PAIRED, calibration=calibration, seed=record.spec.seed)
        sizes[(str(record.spec.shots), record.spec.exp)] = result.test["mean_set_size"]
    return sizes


def section(dataset_dir: Path, expected_cells: int) -> str:
    """The Markdown section: how many selected runs have kept logits, the coverage table, the paired test."""
    runs = kept(dataset_dir)
    if not runs:
        return "### Prediction sets\n\nNo kept logits yet (`studies/real/keep_logits.py`).\n"
    methods = sorted({r.spec.label for r, _ in runs})
    counts = ", ".join(f"{m} {sum(r.spec.label == m for r, _ in runs)}" for m in methods)
    retrained = [json.loads(f.read_text()) for f in (dataset_dir / "logits" / "kept").glob(f"**/{COMMITTED}")]
    same = sum(r["now"] == r["committed"] for r in retrained)
    lines = [
        "### Prediction sets (split conformal on the validation images)",
        "",
        f"Selected runs with kept logits, of {expected_cells} cells per method: {counts}. Coverage and mean set size "
        "on the test images, averaged over those runs; after T: the sets of the temperature-scaled probabilities "
        "(T fitted on the same validation images, then the conformal quantile). With 20 validation images, α = 0.1 "
        "needs the 19th of 20 scores and α = 0.2 the 17th (finite-sample quantile ⌈(n+1)(1−α)⌉/n). "
        f"{len(retrained)} of these runs were trained again (the study kept no logits then) with their committed "
        f"spec; {same} of them reproduced the committed test accuracy exactly (the rest differ by this machine's "
        "arithmetic: docs/reproducibility.md).",
        "",
        coverage_markdown(coverage_table(runs)),
    ]
    ept, linear = set_sizes(runs, "ept", False), set_sizes(runs, "linear", True)
    cells = sorted(set(ept) & set(linear))
    if cells:
        d = paired_comparison([ept[c] - linear[c] for c in cells])
        lines.append(
            f"EPT's set size against the temperature-scaled linear probe's (LAC, α = 0.1, {d.n} cells): EPT smaller "
            f"in {d.losses}, larger in {d.wins}, mean difference {d.mean:+.3f} classes (median {d.median:+.3f}); "
            f"Wilcoxon p = {d.p_wilcoxon:.3g}, sign test p = {d.p_sign:.3g}.\n"
        )
        mean_ept = np.mean([ept[c] for c in cells])
        mean_lin = np.mean([linear[c] for c in cells])
        lines.append(f"Mean set size over those cells: EPT {mean_ept:.3f}, linear probe after T {mean_lin:.3f}.\n")
    return "\n".join(lines)


def keep(bench: Path, out: Path, methods: list[str]) -> None:
    """Keep the logits of ``methods``' selected runs in ``bench`` under ``out/kept`` (see the module's docstring);
    kept runs of those methods that are no longer selected (a staged search's later stage won) are removed."""
    selected = [r for r in read_index(bench) if r.selected and r.spec.method in methods]
    selected.sort(key=lambda r: (methods.index(r.spec.method), r.spec.exp, str(r.spec.shots)))
    study = BenchConfig.from_dict(read_config(bench.parent / "study.yaml"), "study.yaml").shared
    here = {k: str(Path(study[k]).resolve()) for k in ("data_root", "weights")}
    wanted = {out / "kept" / Path(r.spec.run_dir).relative_to("runs") for r in selected}
    for stale in {p.parent for p in (out / "kept").glob(f"**/{LOGITS_FILE}")} - wanted:
        if read_record(stale).spec.method in methods:
            shutil.rmtree(stale)
            print(f"{stale}: no longer selected, removed", flush=True)
    for i, record in enumerate(selected, 1):
        target = out / "kept" / Path(record.spec.run_dir).relative_to("runs")
        if (target / LOGITS_FILE).is_file():
            continue
        source, how = bench / record.spec.run_dir, "copied"
        if not (source / LOGITS_FILE).is_file():
            spec = dataclasses.replace(record.spec, **here)  # the study's files where this checkout has them
            execute(spec, RunJob(out=str(out), cache_dir=str(out / ".cache"), threads=1))
            source, how = out / record.spec.run_dir, "trained again"
        target.mkdir(parents=True, exist_ok=True)
        if how == "trained again":
            now = read_record(source).test["accuracy"]
            write_json(target / COMMITTED, {"committed": record.test["accuracy"], "now": now})
        for name in (RUN_FILE, LOGITS_FILE):
            shutil.copy2(source / name, target / name)
        print(f"[{i}/{len(selected)}] {record.key}: {how}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Keep the logits of the real study's selected runs.")
    parser.add_argument("bench", type=Path, help="the study's bench folder (runs.jsonl with 'selected')")
    parser.add_argument("out", type=Path, help="where the kept logits go (benchmarks/real/<dataset>/logits)")
    parser.add_argument("--methods", required=True, help="comma-separated methods, in the order to run them")
    args = parser.parse_args()
    keep(args.bench, args.out, args.methods.split(","))


if __name__ == "__main__":
    main()
