"""EPT's prompt at every length of one cell, analysed (issue 34's mechanism: the attention mass the prompt absorbs).

``python studies/real/prompt_mass.py benchmarks/real/<dataset> [--shots 10] [--exp 2]`` (from the repository root,
one thread): the cell's EPT runs at its chosen stage-1 learning rate, one per prompt length (the stage-1 run at the
default length and the stage-2 runs), go through ``medpeft analyze`` into ``<dataset>/prompt_mass/`` (committed; the
report's mechanism section reads it). A run whose bench directory holds no weights (restored from ``runs.jsonl``) is
trained again under ``<dataset>/logits/runs`` with its committed spec (same split, seed and recipe), where
``keep_logits.py`` trains its runs too, and taken from there when it already is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keep_logits import study_files, trained
from report import stage

from medpeft.analysis import analyze
from medpeft.bench.store import read_index
from medpeft.errors import UserError


def cell_runs(bench: Path, shots: int, exp: int) -> list:
    """EPT's records of the cell at its chosen stage-1 rate: the stage-2 runs and the stage-1 run they were tried at."""
    cell = [r for r in read_index(bench) if r.spec.method == "ept" and r.spec.shots == shots and r.spec.exp == exp]
    staged = [r for r in cell if stage(r) == 2]
    if not staged:
        raise UserError(f"{bench}: EPT's {shots}-shot cell of sampling {exp} has no stage-2 run (the length search)")
    lr = staged[0].spec.train.lr
    return [r for r in cell if r.spec.train.lr == lr and stage(r) == 1] + staged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="EPT's prompt mass at every prompt length of one cell.")
    parser.add_argument("study", type=Path, help="the dataset's folder (benchmarks/real/<dataset>)")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--exp", type=int, default=2)
    args = parser.parse_args(argv)
    bench = args.study / "bench"
    try:
        cell = cell_runs(bench, args.shots, args.exp)  # the cell first: it needs no data or weights files
        files = study_files(args.study)
        runs = [trained(r, bench, args.study / "logits", files) for r in cell]
        analyze(runs, args.study / "prompt_mass")
    except UserError as err:  # a wrong folder or cell: one line, exit 2
        parser.error(str(err))


if __name__ == "__main__":
    main()
