"""``medpeft analyze``: numbers, figures and a report for the runs of benches and run directories."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..bench import read_index
from ..errors import UserError
from ..files import write_json, write_text
from ..train import resolve_device
from . import figures
from .measure import check_one_backbone, measure
from .plots import Gallery, draw
from .report import DEFINITIONS, groups, report_markdown
from .runs import collect_runs
from .search import draw_search, search_curves


def analyze(paths, out, *, class_index: int | None = None, perplexity: float = 30.0, max_points: int = 200,
            n_splits: int = 5, device: str = "cpu", batch_size: int = 32, candidates: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Analyse the runs of ``paths`` (bench directories and/or run directories); write ``out``; return analysis.json.

    For each run: test features (the CLS token the head reads), scatter numbers and separability
    (:func:`medpeft.analysis.class_statistics`), test ECE; once per (task, backbone setup) the same for the frozen
    backbone ("pretrain"). A bench gives the runs its tables count (``candidates``: every search candidate too).
    Writes ``out/analysis.json``, PNG figures and ``out/report.md``, which links the benches' summaries.

    ``class_index``: the class shown in the PCA and t-SNE figures (default: the class with most test images, for
    multi-label tasks the one with most positives). ``max_points``: test images per t-SNE panel (a fixed random
    subset, the same for every model of a task). ``n_splits``: folds of the separability cross-validation.
    """
    if max_points < 10:
        raise UserError(f"--max-points {max_points} must be at least 10")
    if perplexity <= 0:
        raise UserError(f"--perplexity {perplexity} must be positive")
    start = time.perf_counter()
    sources = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    refs = collect_runs(sources, candidates=candidates)
    check_one_backbone(refs)
    for ref in refs:
        classes = ref.record.task.classes
        if class_index is not None and not 0 <= class_index < len(classes):
            raise UserError(f"--class-index {class_index}: task {ref.record.spec.task!r} has {len(classes)} classes "
                            f"(0 to {len(classes) - 1})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    results, numbers = measure(refs, n_splits=n_splits, device=device, batch_size=batch_size, progress=progress)
    measured = time.perf_counter() - start
    colors = figures.method_colors([r.label for r in results.values()],
                                   {r.label: r.record.spec.method for r in results.values() if r.record is not None})
    gallery = Gallery(out, colors)
    draw(results, numbers, gallery, class_index=class_index, perplexity=perplexity, max_points=max_points)
    curves = search_curves([r for p in sources if (p / "runs.jsonl").is_file() for r in read_index(p)])
    if curves:
        draw_search(gallery, curves)
    analysis = {
        "medpeft_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [str(p) for p in sources],
        "summaries": [os.path.relpath(p / "summary.md", out) for p in sources if (p / "summary.md").is_file()],
        "settings": {"class_index": class_index, "perplexity": perplexity, "max_points": max_points,
                     "n_splits": n_splits, "device": str(device), "candidates": candidates},
        "definitions": DEFINITIONS,
        "runs": numbers,
        "groups": groups(numbers),
        "search": curves,
        "figures": gallery.listed,
        "timing_s": {"features_and_numbers": round(measured, 2), "total": round(time.perf_counter() - start, 2)},
    }
    write_json(out / "analysis.json", analysis)
    write_text(out / "report.md", report_markdown(analysis))
    return analysis


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for analysis.json, the figures and report.md.")
@click.option("--class-index", type=int, help="Class shown in the PCA and t-SNE figures [the most frequent].")
@click.option("--perplexity", type=float, default=30.0, show_default=True,
              help="t-SNE perplexity (capped at (points - 1) / 3).")
@click.option("--max-points", type=int, default=200, show_default=True,
              help="Test images per t-SNE panel (a fixed random subset).")
@click.option("--n-splits", type=int, default=5, show_default=True, help="Folds of the separability cross-validation.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, auto, ...")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--candidates", is_flag=True, help="Every search candidate of a bench, not only the selected runs.")
def command(paths, out, class_index, perplexity, max_points, n_splits, device, batch_size, candidates):
    """Features, scatter numbers and figures of trained runs (bench or run directories) vs the frozen backbone."""
    analysis = analyze(paths, out, class_index=class_index, perplexity=perplexity, max_points=max_points,
                       n_splits=n_splits, device=device, batch_size=batch_size, candidates=candidates)
    click.echo(f"analysed {len(analysis['runs'])} models in {analysis['timing_s']['total']:.0f} s; "
               f"wrote {len(analysis['figures'])} figures, {Path(out) / 'analysis.json'} and {Path(out) / 'report.md'}")
