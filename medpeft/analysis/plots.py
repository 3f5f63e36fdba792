"""Which figures the analysis draws, from the measured models: per task × shot (PCA, t-SNE, scatter bars,
convergence, reliability, per-token maps) and over all of them (results). :mod:`.figures` draws each one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..metrics import expected_calibration_error, reliability_curve
from ..record import shots_order
from ..stats import mean_std
from . import figures
from .measure import Measured, small_blas


@dataclass
class Cell:
    """The models of one task × shot: every run, one shown per method (lowest exp/seed), pretrain first."""

    task: str
    shots: int | str
    runs: list[Measured]
    shown: dict[str, Measured]
    models: list[Measured]

    @property
    def ref(self) -> Measured:
        return next(iter(self.shown.values()))

    @property
    def tag(self) -> str:
        return f"{slug(self.task)}_{self.shots}-shot"

    @property
    def where(self) -> str:
        return f"{self.task}, {self.shots}-shot"

    @property
    def which(self) -> str:
        return "; one run per method (lowest exp/seed)" if len(self.runs) > len(self.shown) else ""


class Gallery:
    """The figures written so far: ``listed`` is [{kind, file, caption, section}] in report order."""

    def __init__(self, out: Path, colors: dict[str, str]):
        self.out, self.colors, self.listed = out, colors, []

    def add(self, kind: str, file: str, caption: str, section: str) -> Path:
        self.listed.append({"kind": kind, "file": file, "caption": caption, "section": section})
        return self.out / file


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


def cells_of(results: dict[str, Measured]) -> list[Cell]:
    runs = [r for r in results.values() if r.shots is not None]
    pretrain: dict[tuple, Measured] = {}
    for r in results.values():
        if r.shots is None:
            pretrain.setdefault(r.test_key, r)
    cells = []
    for task, shots in dict.fromkeys((r.task, r.shots) for r in runs):
        members = [r for r in runs if (r.task, r.shots) == (task, shots)]
        shown: dict[str, Measured] = {}
        for r in sorted(members, key=lambda r: (r.exp, r.seed)):
            shown.setdefault(r.label, r)
        ref = next(iter(shown.values()))
        base = [pretrain[ref.test_key]] if ref.test_key in pretrain else []
        same_test = [r for r in shown.values() if r.test_key == ref.test_key]
        cells.append(Cell(task, shots, members, shown, base + same_test))
    return cells


def draw(
    results: dict[str, Measured],
    numbers: dict[str, dict],
    gallery: Gallery,
    *,
    class_index: int | None,
    perplexity: float,
    max_points: int,
) -> None:
    """Draw every figure of the measured models into the gallery's folder."""
    with small_blas():
        for cell in cells_of(results):
            c = class_index if class_index is not None else default_class(cell.ref)
            if not 0 <= c < len(cell.ref.classes):
                raise ParameterError(
                    "class_index",
                    "{class_index} {value}: task {task!r} has {n} classes (0 to {last})",
                    value=c,
                    task=cell.task,
                    n=len(cell.ref.classes),
                    last=len(cell.ref.classes) - 1,
                )
            pca_figure(gallery, cell, c)
            tsne_figure(gallery, cell, numbers, c, perplexity, max_points)
            scatter_figure(gallery, cell, numbers)
            convergence_figure(gallery, cell)
            reliability_figure(gallery, cell)
            map_figures(gallery, cell)
            mass_figure(gallery, cell)
        results_figure(gallery, results, numbers)


def default_class(res: Measured) -> int:
    """The class with most test images (multi-label: most positives); ties to the higher index (binary: positive)."""
    counts = res.labels.sum(axis=0) if res.multilabel else np.bincount(res.labels, minlength=len(res.classes))
    return int(len(counts) - 1 - np.argmax(counts[::-1]))


def _in_class(ref: Measured, c: int) -> np.ndarray:
    return (ref.labels[:, c] == 1) if ref.multilabel else (ref.labels == c)


def pca_figure(gallery: Gallery, cell: Cell, c: int) -> None:
    ref, cname = cell.ref, cell.ref.classes[c]
    in_class = _in_class(ref, c)
    path = gallery.add(
        "pca",
        f"pca_{cell.tag}.png",
        f"PCA of each model's test features ({cell.where}{cell.which}): "
        f"histogram of the first component for class '{cname}' (colour) against the other images "
        "(black), in units of the component's std; σ(class) is the class's spread along it (smaller = "
        "tighter class).",
        cell.where,
    )
    figures.pca_histograms(
        path,
        [(m.label, m.features, in_class, gallery.colors[m.label]) for m in cell.models],
        class_name=f"{cname} (n={int(in_class.sum())})",
        title=f"First principal component, class '{cname}' vs the other test images ({cell.where})",
    )


def tsne(features: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """2-D t-SNE: exact gradients (faster than Barnes-Hut below a few hundred points), PCA init, 500 iterations;
    features first reduced to 50 principal components when wider."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if features.shape[1] > 50 and n > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = float(min(perplexity, max(2.0, (n - 1) / 3)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, method="exact", max_iter=500
    ).fit_transform(features)


def tsne_figure(gallery: Gallery, cell: Cell, numbers: dict, c: int, perplexity: float, max_points: int) -> None:
    ref, cname = cell.ref, cell.ref.classes[c]
    n = len(ref.labels)
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    if ref.multilabel:
        groups, names = _in_class(ref, c)[subset].astype(int), [f"not {cname}", cname]
    else:
        groups, names = ref.labels[subset], ref.classes
    panels = []
    for m in cell.models:
        sep = numbers[m.name]["linear_separability"]
        if ref.multilabel:
            sep = numbers[m.name]["per_class"]["linear_separability"][c]
        panels.append(
            (
                m.label + ("" if sep is None else f" (sep. {sep:.2f})"),
                tsne(m.features[subset], perplexity),
                groups,
                gallery.colors[m.label],
            )
        )
    path = gallery.add(
        "tsne",
        f"tsne_{cell.tag}.png",
        f"2-D t-SNE of {len(subset)} test images' features per model "
        f"({cell.where}{cell.which}); shading is a Gaussian KDE per class; 'sep.' is the "
        "cross-validated linear separability of " + (f"'{cname}' vs the rest." if ref.multilabel else "the classes."),
        cell.where,
    )
    figures.tsne_densities(path, panels, names, title=f"t-SNE of test features, density per class ({cell.where})")


def scatter_figure(gallery: Gallery, cell: Cell, numbers: dict) -> None:
    chance = 0.5 if cell.ref.multilabel else 1 / len(cell.ref.classes)
    panels = []
    for number, title, xlabel, better, extra in (
        ("intra_class_scatter", "intra-class scatter tr Σ_W", "feature units²", "lower", {}),
        ("scatter_ratio", "scatter ratio tr Σ_W / tr Σ_B", "ratio (scale-free)", "lower", {}),
        (
            "linear_separability",
            "linear separability",
            "balanced accuracy (CV); dotted: chance",
            "higher",
            {"chance": chance, "xmax": 1.0},
        ),
    ):
        values = {
            m.label: mean_std(
                [numbers[x.name][number] for x in ([m] if m.shots is None else cell.runs) if x.label == m.label]
            )
            for m in cell.models
        }
        panels.append({"title": title, "xlabel": xlabel, "better": better, **extra, "values": values})
    path = gallery.add(
        "scatter",
        f"scatter_{cell.tag}.png",
        f"The numbers behind the pictures ({cell.where}): Eq. "
        "11's intra-class scatter, its ratio to the inter-class scatter, and linear separability, per "
        "model (mean ± std over runs; dashed: pretrain).",
        cell.where,
    )
    figures.labelled_bars(
        path, panels, gallery.colors, title=f"How tightly test features group by class ({cell.where})"
    )


def convergence_figure(gallery: Gallery, cell: Cell) -> None:
    series, metric = {}, None
    for r in cell.runs:
        metric = metric or r.record.task.selection_metric
        hist = r.record.result.history
        series.setdefault(r.label, []).append(
            {
                "val": [100 * h[f"val_{metric}"] for h in hist if f"val_{metric}" in h],
                "ece": [100 * h["val_ECE"] for h in hist if "val_ECE" in h],
                "loss": [h["train_loss"] for h in hist if "train_loss" in h],
            }
        )
    if not metric or not any(s["val"] for runs in series.values() for s in runs):
        return
    path = gallery.add(
        "convergence",
        f"convergence_{cell.tag}.png",
        f"Validation {metric}, validation ECE and "
        f"training loss per epoch ({cell.where}); line: mean over the runs (experiments × seeds), band: "
        "their min–max.",
        cell.where,
    )
    spread = "mean over runs, band = min–max" if len(cell.runs) > len(cell.shown) else "one run per method"
    figures.convergence_curves(
        path,
        series,
        [("val", f"val {metric} (×100)"), ("ece", "val ECE (×100)"), ("loss", "train loss")],
        gallery.colors,
        title=f"Convergence per method ({cell.where}): {spread}",
    )


def reliability_figure(gallery: Gallery, cell: Cell) -> None:
    panels = []
    for label in cell.shown:
        members = [r for r in cell.runs if r.label == label and r.probs is not None]
        probs, labels = np.concatenate([r.probs for r in members]), np.concatenate([r.labels for r in members])
        conf, acc, count = reliability_curve(probs, labels, cell.ref.multilabel)
        ece = float(np.mean([expected_calibration_error(r.probs, r.labels, r.multilabel) for r in members]))
        panels.append((label, conf, acc, count, ece, gallery.colors[label]))
    what = "every image × class probability" if cell.ref.multilabel else "top-1 confidence"
    path = gallery.add(
        "reliability",
        f"reliability_{cell.tag}.png",
        f"Reliability diagrams of the test predictions "
        f"({cell.where}; {what}, runs pooled); ECE in the titles is the mean over runs; grey: share of "
        "predictions per bin.",
        cell.where,
    )
    figures.reliability_diagrams(
        path,
        panels,
        multilabel=cell.ref.multilabel,
        num_classes=len(cell.ref.classes),
        title=f"Reliability of test predictions ({cell.where})",
    )


def map_figures(gallery: Gallery, cell: Cell) -> None:
    """The method's per-token maps per block over the patch grid (EPT: the patch-wise scaling)."""
    for label in cell.shown:
        members = [r for r in cell.runs if r.label == label and r.maps]
        if not members:
            continue
        first = members[0]
        layers = sorted(first.maps)
        s = np.mean([np.stack([r.maps[i] for i in layers]) for r in members], axis=0)
        grid = f"{first.grid[0]}×{first.grid[1]}"
        path = gallery.add(
            "patch_scaling",
            f"patch_scaling_{slug(label)}_{cell.tag}.png",
            f"{label}'s {first.maps_title} per block over the {grid} patch grid ({cell.where}); one "
            "colour scale for every block, the CLS token's value in each title; below: the mean per "
            "block (1 = attention untouched).",
            cell.where,
        )
        figures.patch_scaling_maps(
            path,
            layers,
            s,
            first.grid,
            first.num_prefix,
            title=f"{label}: {first.maps_title} per block ({cell.where}, mean over test images, "
            f"heads and {len(members)} run(s))",
        )


def mass_figure(gallery: Gallery, cell: Cell) -> None:
    """The share of attention mass the prompt takes per block, at init and trained, one line per method and prompt
    length (mean over the runs of that length)."""
    groups: dict[str, list[Measured]] = {}
    for r in cell.runs:
        if r.prompt_mass:
            length = r.record.model.options.get("prompt_length")
            groups.setdefault(r.label if length is None else f"{r.label}, L = {length}", []).append(r)
    if not groups:
        return
    lines = {}
    for name, members in sorted(groups.items(), key=lambda kv: (kv[0].split(",")[0], _length(kv[1][0]))):
        layers = sorted(members[0].prompt_mass["trained"])
        lines[name] = {
            when: {
                stat: np.mean([[getattr(r.prompt_mass[when][i], stat) for i in layers] for r in members], axis=0)
                for stat in ("mean", "min", "max")
            }
            for when in ("init", "trained")
        }
        lines[name]["layers"] = layers
    path = gallery.add(
        "prompt_mass",
        f"prompt_mass_{cell.tag}.png",
        f"Share of each attention row's softmax mass that the prompt takes, per block ({cell.where}): "
        "dashed at the runs' initialisation, solid trained, the band its min–max over test images, "
        "heads and tokens (mean over the runs of each prompt length).",
        cell.where,
    )
    figures.mass_curves(path, lines, title=f"Attention mass absorbed by the prompt ({cell.where})")


def _length(res: Measured) -> int:
    return res.record.model.options.get("prompt_length") or 0


def results_figure(gallery: Gallery, results: dict[str, Measured], numbers: dict) -> None:
    runs = [r for r in results.values() if r.shots is not None]
    tasks = list(dict.fromkeys(r.task for r in runs))
    if not tasks:
        return
    labels = list(dict.fromkeys(r.label for r in runs))
    panels = []
    for row in ("metric", "ECE"):
        for task in tasks:
            t_runs = [r for r in runs if r.task == task]
            metric = t_runs[0].record.task.report_metric if row == "metric" else "ECE"
            shots = sorted({r.shots for r in t_runs}, key=shots_order)
            bars = {}
            for label in labels:
                values = [
                    mean_std(
                        [numbers[r.name]["test_metrics"][metric] for r in t_runs if r.label == label and r.shots == k]
                    )
                    for k in shots
                ]
                if any(not np.isnan(m) for m, _ in values):
                    bars[label] = [(100 * m, 100 * s) for m, s in values]
            panels.append(
                {
                    "title": f"{task}: test {metric}" + (" (lower is better)" if metric == "ECE" else ""),
                    "ylabel": f"test {metric} (×100)",
                    "xlabel": "shots",
                    "groups": [f"{k}-shot" for k in shots],
                    "bars": bars,
                }
            )
    path = gallery.add(
        "results",
        "results.png",
        "Test metric (top: mAP for multi-label tasks, accuracy otherwise) and "
        "test ECE (bottom) per method and shot; bars: mean over runs, whiskers: std.",
        "all tasks",
    )
    figures.grouped_bars(
        path, panels, gallery.colors, ncols=len(tasks), title="Test results per method and shot (mean ± std over runs)"
    )
