"""The feature analysis of the real study's selected runs of one shot count (the report's features and mechanism).

``python studies/real/analyze_selected.py benchmarks/real/<dataset> [--shots 10]`` (from the repository root, one
thread): every method's selected run of each sampling at that shot count goes through ``medpeft analyze`` into
``<dataset>/bench/analysis/`` (committed). A selected run whose bench directory holds no weights (restored from
``runs.jsonl``) is trained again under ``<dataset>/logits/runs`` with its committed spec (same split, seed and
recipe), where ``keep_logits.py`` trains its runs too, and taken from there when it already is. Run it again after a
search changes which runs are selected (the report names the analysed runs that are no longer selected).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keep_logits import study_files, trained

from medpeft.analysis import analyze
from medpeft.bench.store import read_index
from medpeft.errors import UserError


def selected_runs(bench: Path, shots: int) -> list:
    """The selected records of ``bench`` at ``shots``, in the bench's order."""
    runs = [r for r in read_index(bench) if r.selected and r.spec.shots == shots]
    if not runs:
        raise UserError(f"{bench}/runs.jsonl: no selected run at {shots} shots")
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The feature analysis of the study's selected runs of one shot count.")
    parser.add_argument("study", type=Path, help="the dataset's folder (benchmarks/real/<dataset>)")
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args(argv)
    bench = args.study / "bench"
    try:
        runs = selected_runs(bench, args.shots)  # before the data and weights files: it needs neither
        files = study_files(args.study)
        analyze([trained(r, bench, args.study / "logits", files) for r in runs], bench / "analysis")
    except UserError as err:  # a wrong folder or shot count: one line, exit 2
        parser.error(str(err))


if __name__ == "__main__":
    main()
