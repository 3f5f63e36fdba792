"""Keep the logits of the real study's selected runs (issue 33), for the report's prediction-set section.

``python studies/real/keep_logits.py BENCH OUT --methods linear,ept`` (from the repository root, one thread): for
every selected run of those methods in BENCH/runs.jsonl, its ``run.json`` and ``logits.npz`` go to
``OUT/kept/<label>/<cell>/<candidate>/`` (committed): copied from the bench's run directory, or, where the bench kept
no logits (runs made before medpeft kept them), from the selected candidate trained again under ``OUT/runs`` with its
committed spec (same split, seed and recipe; each cell's selection stays as committed; the kept ``run.json`` then
holds the new run's metrics, which the report compares with the committed ones). Resumable: what OUT holds, kept or
trained again (also by prompt_mass.py or analyze_selected.py), is not redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from medpeft.bench.config import BenchConfig, read_config
from medpeft.bench.store import read_index
from medpeft.bench.worker import RunJob, execute
from medpeft.errors import UserError
from medpeft.posthoc import LOGITS_FILE
from medpeft.record import RUN_FILE, WEIGHTS_FILE, read_record


def study_files(study: Path) -> dict[str, str]:
    """``study.yaml``'s data and weights files (``study``: the dataset's folder) where this checkout has them."""
    shared = BenchConfig.from_dict(read_config(study / "study.yaml"), "study.yaml").shared
    return {k: str(Path(shared[k]).resolve()) for k in ("data_root", "weights")}


def train_again(record, out: Path, files: dict[str, str]) -> Path:
    """``record``'s run trained again under ``out`` with its committed spec (same split, seed and recipe) and the
    study's ``files`` (:func:`study_files`); its run directory."""
    execute(dataclasses.replace(record.spec, **files), RunJob(out=str(out), cache_dir=str(out / ".cache"), threads=1))
    return out / record.spec.run_dir


def trained(record, bench: Path, again: Path, files: dict[str, str]) -> Path:
    """A run directory of ``record`` with its weights: the bench's, else one trained again under ``again``."""
    for folder in (bench / record.spec.run_dir, again / record.spec.run_dir):
        if (folder / WEIGHTS_FILE).is_file():
            return folder
    return train_again(record, again, files)


def keep(
    bench: Path, out: Path, methods: list[str], exps: list[int] | None = None, shots: list[int] | None = None
) -> None:
    """Keep the logits of ``methods``' selected runs in ``bench`` (of ``exps`` and ``shots``, default all) under
    ``out/kept`` (see the module's docstring); kept runs of those that are no longer selected (a staged search's later
    stage won) are removed."""

    def wanted_run(spec) -> bool:
        return spec.method in methods and (exps is None or spec.exp in exps) and (shots is None or spec.shots in shots)

    selected = [r for r in read_index(bench) if r.selected and wanted_run(r.spec)]
    selected.sort(key=lambda r: (methods.index(r.spec.method), r.spec.exp, str(r.spec.shots)))
    files = study_files(bench.parent)
    wanted = {out / "kept" / Path(r.spec.run_dir).relative_to("runs") for r in selected}
    for stale in {p.parent for p in (out / "kept").glob(f"**/{LOGITS_FILE}")} - wanted:
        if wanted_run(read_record(stale).spec):
            shutil.rmtree(stale)
            print(f"{stale}: no longer selected, removed", flush=True)
    for i, record in enumerate(selected, 1):
        target = out / "kept" / Path(record.spec.run_dir).relative_to("runs")
        if (target / LOGITS_FILE).is_file():
            continue
        done = [f for f in (bench / record.spec.run_dir, out / record.spec.run_dir) if (f / LOGITS_FILE).is_file()]
        source, how = (done[0], "copied") if done else (train_again(record, out, files), "trained again")
        target.mkdir(parents=True, exist_ok=True)
        for name in (RUN_FILE, LOGITS_FILE):
            shutil.copy2(source / name, target / name)
        print(f"[{i}/{len(selected)}] {record.key}: {how}", flush=True)


def numbers(text: str) -> list[int]:
    """A comma-separated list of whole numbers (``--exps``, ``--shots``)."""
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Keep the logits of the real study's selected runs.")
    parser.add_argument("bench", type=Path, help="the study's bench folder (runs.jsonl with 'selected')")
    parser.add_argument("out", type=Path, help="where the kept logits go (benchmarks/real/<dataset>/logits)")
    parser.add_argument("--methods", required=True, help="comma-separated methods, in the order to run them")
    parser.add_argument("--exps", type=numbers, help="comma-separated samplings (e.g. 1,2,3)")
    parser.add_argument("--shots", type=numbers, help="comma-separated shot counts (e.g. 10: the analysis reads them)")
    args = parser.parse_args(argv)
    try:
        keep(args.bench, args.out, args.methods.split(","), args.exps, args.shots)
    except UserError as err:  # a wrong folder: one line, exit 2
        parser.error(str(err))


if __name__ == "__main__":
    main()
