"""Numbers, figures and a report for the runs of benches and run directories (``medpeft analyze``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..bench import read_index
from ..errors import ParameterError
from ..files import write_json, write_text
from ..train import resolve_device
from ..version import __version__
from . import figures
from .measure import check_one_backbone, measure
from .plots import Gallery, draw
from .report import DEFINITIONS, groups, report_markdown
from .runs import collect_runs
from .search import draw_search, search_curves


def analyze(
    paths: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    class_index: int | None = None,
    perplexity: float = 30.0,
    max_points: int = 200,
    n_splits: int = 5,
    device: str = "cpu",
    batch_size: int = 32,
    candidates: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
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
        raise ParameterError("max_points", "{max_points} {value} must be at least 10", value=max_points)
    if perplexity <= 0:
        raise ParameterError("perplexity", "{perplexity} {value} must be positive", value=perplexity)
    start = time.perf_counter()
    sources = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    refs = collect_runs(sources, candidates=candidates)
    check_one_backbone(refs)
    for ref in refs:
        classes = ref.record.task.classes
        if class_index is not None and not 0 <= class_index < len(classes):
            raise ParameterError(
                "class_index",
                "{class_index} {value}: task {task!r} has {n} classes (0 to {last})",
                value=class_index,
                task=ref.record.spec.task,
                n=len(classes),
                last=len(classes) - 1,
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    results, numbers = measure(refs, n_splits=n_splits, device=device, batch_size=batch_size, progress=progress)
    measured = time.perf_counter() - start
    colors = figures.method_colors(
        [r.label for r in results.values()],
        {r.label: r.record.spec.method for r in results.values() if r.record is not None},
    )
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
        "settings": {
            "class_index": class_index,
            "perplexity": perplexity,
            "max_points": max_points,
            "n_splits": n_splits,
            "device": str(device),
            "candidates": candidates,
        },
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
