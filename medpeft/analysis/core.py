"""``medpeft analyze``: features, numbers, figures and a report for the runs of benches and run directories."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import UserError
from ..metrics import expected_calibration_error, reliability_curve, task_metrics
from . import figures
from .extract import RunRef, collect_runs, forward_pass
from .scatter import class_statistics

NUMBERS = ("intra_class_scatter", "inter_class_scatter", "scatter_ratio", "linear_separability", "ECE")


@dataclass
class _Result:
    """What one analysed model leaves in memory for the figures."""

    name: str
    label: str
    task: str
    shots: int | None
    exp: int
    seed: int
    features: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None
    test_key: tuple
    multilabel: bool
    classes: list[str]
    ref: RunRef | None = None
    scaling: dict | None = None
    grid: tuple | None = None
    num_prefix: int = 1


def _pretrain_key(config: dict) -> tuple:
    random_init = not config["pretrained"] and not config.get("weights")
    return (config["task"], config["data_root"], config.get("test_list"), config["backbone"], config["pretrained"],
            config.get("weights"), config["model"]["img_size"], config["train"]["seed"] if random_init else None)


def analyze(paths, out, *, class_index: int | None = None, perplexity: float = 30.0, max_points: int = 200,
            n_splits: int = 5, device: str = "cpu", batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Analyse every run of ``paths`` (bench directories and/or run directories); write ``out``; return analysis.json.

    For each run: test features (the CLS token the head reads), scatter numbers and separability
    (:func:`medpeft.analysis.class_statistics`), test ECE; once per (task, backbone setup) the same for the frozen
    backbone ("pretrain"). Writes ``out/analysis.json``, PNG figures and ``out/report.md``.

    ``class_index``: the class shown in the PCA and t-SNE figures (default: the class with most test images, for
    multi-label tasks the one with most positives). ``max_points``: test images per t-SNE panel (a fixed random
    subset, the same for every model of a task). ``n_splits``: folds of the separability cross-validation.
    """
    from ..data import ResizedImageCache
    from ..experiment import load_data, load_run
    from ..model import build_model
    from ..train import resolve_device, seed_everything

    if max_points < 10:
        raise UserError(f"--max-points {max_points} must be at least 10")
    if perplexity <= 0:
        raise UserError(f"--perplexity {perplexity} must be positive")
    start = time.perf_counter()
    refs = collect_runs(paths)
    for ref in refs:
        classes = ref.config.get("classes") or []
        if class_index is not None and classes and not 0 <= class_index < len(classes):
            raise UserError(f"--class-index {class_index}: task {ref.task!r} has {len(classes)} classes "
                            f"(0 to {len(classes) - 1})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    cache = ResizedImageCache()
    results: dict[str, _Result] = {}
    records: dict[str, dict] = {}
    pretrain_names: dict[tuple, str] = {}
    bar = tqdm(refs, desc="analyze", disable=not progress or None)
    for ref in bar:
        bar.set_postfix_str(ref.name)
        model, config = load_run(ref.run_dir, device=str(device))
        data = load_data(config["task"], config["data_root"], config["shots"], config["exp"], config["train"]["seed"],
                         config.get("test_list"))
        test = data.test
        if test is None or test.labels is None or len(test) < 2:
            raise UserError(f"{ref.run_dir}: its test list has no labelled images; the analysis needs them")
        img_size = model.config["img_size"]
        key = (config["task"], tuple(test.names))
        fwd = forward_pass(model, test, data.task, img_size, batch_size=batch_size, cache=cache, device=device)
        common = dict(task=config["task"], exp=ref.exp, seed=ref.seed, labels=test.labels, test_key=key,
                      multilabel=data.task.multilabel, classes=list(data.task.classes),
                      num_prefix=model.backbone.num_prefix_tokens)
        results[ref.name] = _Result(ref.name, ref.label, shots=ref.shots, features=fwd.features,
                                    probs=fwd.probabilities, ref=ref, scaling=fwd.scaling or None,
                                    grid=tuple(model.backbone.patch_embed.grid_size), **common)
        records[ref.name] = _record(results[ref.name], n_splits, method=ref.method, run_dir=str(ref.run_dir),
                                    options=config.get("options", {}))
        pkey = _pretrain_key(config)
        if pkey not in pretrain_names:
            del model
            seed_everything(config["train"]["seed"])  # a random-init backbone: the one the runs started from
            frozen = build_model("linear", config["backbone"], data.task.num_classes, pretrained=config["pretrained"],
                                 weights=config.get("weights"), img_size=img_size)
            feats = forward_pass(frozen, test, data.task, img_size, batch_size=batch_size, cache=cache, device=device,
                                 head=False, scaling=False).features
            name = f"pretrain/{config['task']}"
            if name in records:
                name = f"{name}/{config['backbone']}@{img_size}/seed{config['train']['seed']}"
            pretrain_names[pkey] = name
            results[name] = _Result(name, figures.PRETRAIN, shots=None, features=feats, probs=None, **common)
            records[name] = _record(results[name], n_splits, method="pretrain", backbone=config["backbone"],
                                    pretrained=config["pretrained"], weights=config.get("weights"), img_size=img_size)
    analysis_time = time.perf_counter() - start
    colors = figures.method_colors([r.label for r in results.values()],
                                   {r.label: r.ref.method for r in results.values() if r.ref is not None})
    with _small_blas():
        figure_list = _figures(results, records, out, colors, class_index=class_index, perplexity=perplexity,
                               max_points=max_points)
    groups = _groups(results, records)
    analysis = {
        "medpeft_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)],
        "settings": {"class_index": class_index, "perplexity": perplexity, "max_points": max_points,
                     "n_splits": n_splits, "device": str(device)},
        "definitions": DEFINITIONS,
        "runs": records,
        "groups": groups,
        "figures": figure_list,
        "timing_s": {"features_and_numbers": round(analysis_time, 2),
                     "total": round(time.perf_counter() - start, 2)},
    }
    from ..bench import write_summary
    from ..experiment import write_json

    write_json(out / "analysis.json", analysis)
    (out / "report.md").write_text(report_markdown(analysis))
    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        if (Path(path) / "runs.jsonl").is_file():
            write_summary(path)  # links the report when it lies inside the bench folder
    return analysis


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


def _small_blas():
    """One BLAS thread for the many tiny matrix problems (PCA, t-SNE, logistic regression on ~100 × D): several
    threads make them many times slower, most of all on a busy machine. Restored on exit."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _record(res: _Result, n_splits: int, **extra) -> dict[str, Any]:
    with _small_blas():
        stats = class_statistics(res.features, res.labels, n_splits=n_splits)
    record = {"label": res.label, "task": res.task, "shots": res.shots, "exp": res.exp, "seed": res.seed, **extra,
              "n_test": len(res.features), "feature_dim": res.features.shape[1], **stats, "ECE": None}
    if res.probs is not None:
        record["ECE"] = expected_calibration_error(res.probs, res.labels, res.multilabel)
        record["test_metrics"] = task_metrics(res.probs, res.labels, res.multilabel)
    if res.scaling:
        layers = sorted(res.scaling)
        s = np.stack([res.scaling[i] for i in layers])
        p = res.num_prefix
        record["patch_scaling"] = {"blocks": layers, "cls_mean": s[:, 0].tolist() if p else None,
                                   "patch_mean": s[:, p:].mean(axis=1).tolist(),
                                   "patch_min": s[:, p:].min(axis=1).tolist(),
                                   "patch_max": s[:, p:].max(axis=1).tolist()}
    return record


def _mean_std(values) -> tuple[float, float]:
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _json_ms(mean_std: tuple[float, float]) -> dict[str, float | None]:
    return {k: None if np.isnan(v) else v for k, v in zip(("mean", "std"), mean_std)}


def _report_metric(res: _Result) -> str:
    return "mAP" if res.multilabel else "accuracy"


def _groups(results: dict[str, _Result], records: dict[str, dict]) -> list[dict]:
    """Mean and std of every number per (label, task, shots); pretrain rows (shots None) first per task."""
    grouped: dict[tuple, list[str]] = {}
    for name, res in results.items():
        grouped.setdefault((res.task, res.shots is not None, res.label, res.shots), []).append(name)
    rows = []
    order = {task: i for i, task in enumerate(dict.fromkeys(r.task for r in results.values()))}
    for (task, _, label, shots), names in sorted(grouped.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        row = {"label": label, "task": task, "shots": shots, "n_runs": len(names), "runs": names}
        for number in NUMBERS:
            row[number] = _json_ms(_mean_std([records[n][number] for n in names]))
        metric = _report_metric(results[names[0]])
        row["metric"] = metric
        row["metric_value"] = _json_ms(_mean_std([records[n].get("test_metrics", {}).get(metric) for n in names]))
        rows.append(row)
    return rows


def _default_class(res: _Result) -> int:
    """The class with most test images (multi-label: most positives); ties to the higher index (binary: positive)."""
    counts = res.labels.sum(axis=0) if res.multilabel else np.bincount(res.labels, minlength=len(res.classes))
    return int(len(counts) - 1 - np.argmax(counts[::-1]))


def _tsne(features: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """2-D t-SNE: exact gradients (faster than Barnes-Hut below a few hundred points), PCA init, 500 iterations;
    features first reduced to 50 principal components when wider."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if features.shape[1] > 50 and n > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = float(min(perplexity, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method="exact",
                max_iter=500).fit_transform(features)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


def _figures(results: dict[str, _Result], records: dict[str, dict], out: Path, colors: dict[str, str], *,
             class_index: int | None, perplexity: float, max_points: int) -> list[dict[str, str]]:
    """Draw every figure; returns [{file, caption, kind}] in report order."""
    listed: list[dict[str, str]] = []

    section = "all tasks"

    def add(kind: str, file: str, caption: str):
        listed.append({"kind": kind, "file": file, "caption": caption, "section": section})

    runs = [r for r in results.values() if r.shots is not None]
    cells = list(dict.fromkeys((r.task, r.shots) for r in runs))
    pretrain = {}
    for r in results.values():
        if r.shots is None:
            pretrain.setdefault(r.test_key, r)
    for task, shots in cells:
        cell = [r for r in runs if (r.task, r.shots) == (task, shots)]
        first: dict[str, _Result] = {}
        for r in sorted(cell, key=lambda r: (r.exp, r.seed)):
            first.setdefault(r.label, r)
        shown = list(first.values())
        ref = shown[0]
        base = [pretrain[ref.test_key]] if ref.test_key in pretrain else []
        models = base + [r for r in shown if r.test_key == ref.test_key]
        tag = f"{_slug(task)}_{shots}-shot"
        where = section = f"{task}, {shots}-shot"
        which = "; one run per method (lowest exp/seed)" if len(cell) > len(shown) else ""

        c = class_index if class_index is not None else _default_class(ref)
        if not 0 <= c < len(ref.classes):
            raise UserError(f"--class-index {c}: task {task!r} has {len(ref.classes)} classes "
                            f"(0 to {len(ref.classes) - 1})")
        cname = ref.classes[c]
        in_class = (ref.labels[:, c] == 1) if ref.multilabel else (ref.labels == c)
        file = f"pca_{tag}.png"
        figures.pca_histograms(out / file, [(m.label, m.features, in_class, colors[m.label]) for m in models],
                               class_name=f"{cname} (n={int(in_class.sum())})",
                               title=f"First principal component, class '{cname}' vs the other test images ({where})")
        add("pca", file, f"PCA of each model's test features ({where}{which}): histogram of the first component "
            f"for class '{cname}' (colour) against the other images (black), in units of the component's std; "
            "σ(class) is the class's spread along it (smaller = tighter class).")

        rng = np.random.default_rng(0)
        n = len(ref.labels)
        subset = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
        if ref.multilabel:
            groups, names = in_class[subset].astype(int), [f"not {cname}", cname]
        else:
            groups, names = ref.labels[subset], ref.classes
        panels = []
        for m in models:
            sep = records[m.name]["linear_separability"]
            if ref.multilabel:
                sep = records[m.name]["per_class"]["linear_separability"][c]
            panels.append((m.label + ("" if sep is None else f" (sep. {sep:.2f})"),
                           _tsne(m.features[subset], perplexity), groups, colors[m.label]))
        file = f"tsne_{tag}.png"
        figures.tsne_densities(out / file, panels, names,
                               title=f"t-SNE of test features, density per class ({where})")
        add("tsne", file, f"2-D t-SNE of {len(subset)} test images' features per model ({where}{which}); "
            "shading is a Gaussian KDE per class; 'sep.' is the cross-validated linear separability of "
            + (f"'{cname}' vs the rest." if ref.multilabel else "the classes."))

        scatter_panels = []
        chance = 0.5 if ref.multilabel else 1 / len(ref.classes)
        for number, title, xlabel, better, extra in (
                ("intra_class_scatter", "intra-class scatter tr Σ_W", "feature units²", "lower", {}),
                ("scatter_ratio", "scatter ratio tr Σ_W / tr Σ_B", "ratio (scale-free)", "lower", {}),
                ("linear_separability", "linear separability", "balanced accuracy (CV); dotted: chance", "higher",
                 {"chance": chance, "xmax": 1.0})):
            scatter_panels.append({"title": title, "xlabel": xlabel, "better": better, **extra, "values": {
                m.label: _mean_std([records[x.name][number] for x in ([m] if m.shots is None else cell)
                                    if x.label == m.label]) for m in models}})
        file = f"scatter_{tag}.png"
        figures.labelled_bars(out / file, scatter_panels, colors,
                              title=f"How tightly test features group by class ({where})")
        add("scatter", file, f"The numbers behind the pictures ({where}): Eq. 11's intra-class scatter, its ratio to "
            "the inter-class scatter, and linear separability, per model (mean ± std over runs; dashed: pretrain).")

        series = {}
        metric = None
        for r in cell:
            metrics = r.ref.metrics or {}
            metric = metric or metrics.get("selection_metric")
            hist = metrics.get("history", [])
            series.setdefault(r.label, []).append({
                "val": [100 * h[f"val_{metric}"] for h in hist if f"val_{metric}" in h],
                "ece": [100 * h["val_ECE"] for h in hist if "val_ECE" in h],
                "loss": [h["train_loss"] for h in hist if "train_loss" in h]})
        if metric and any(s["val"] for runs_ in series.values() for s in runs_):
            file = f"convergence_{tag}.png"
            figures.convergence_curves(out / file, series, [("val", f"val {metric} (×100)"),
                                                            ("ece", "val ECE (×100)"), ("loss", "train loss")],
                                       colors, title=f"Convergence per method ({where}): " + (
                                           "mean over runs, band = min–max" if len(cell) > len(first)
                                           else "one run per method"))
            add("convergence", file, f"Validation {metric}, validation ECE and training loss per epoch ({where}); "
                "line: mean over the runs (experiments × seeds), band: their min–max.")

        rel = []
        for label in first:
            members = [r for r in cell if r.label == label and r.probs is not None]
            probs = np.concatenate([r.probs for r in members])
            labels = np.concatenate([r.labels for r in members])
            conf, acc, count = reliability_curve(probs, labels, ref.multilabel)
            ece = float(np.mean([expected_calibration_error(r.probs, r.labels, r.multilabel) for r in members]))
            rel.append((label, conf, acc, count, ece, colors[label]))
        file = f"reliability_{tag}.png"
        figures.reliability_diagrams(out / file, rel, multilabel=ref.multilabel, num_classes=len(ref.classes),
                                     title=f"Reliability of test predictions ({where})")
        add("reliability", file, f"Reliability diagrams of the test predictions ({where}; "
            + ("every image × class probability" if ref.multilabel else "top-1 confidence")
            + ", runs pooled); ECE in the titles is the mean over runs; grey: share of predictions per bin.")

        for label in first:
            members = [r for r in cell if r.label == label and r.scaling]
            if not members:
                continue
            layers = sorted(members[0].scaling)
            s = np.mean([np.stack([r.scaling[i] for i in layers]) for r in members], axis=0)
            file = f"patch_scaling_{_slug(label)}_{tag}.png"
            figures.patch_scaling_maps(out / file, layers, s, members[0].grid, members[0].num_prefix,
                                       title=f"{label}: patch-wise scaling "
                                             "$s_j = Z_j / (Z_j + \\sum_l e^{P_{jl}})$ per block "
                                             f"({where}, mean over test images, heads and {len(members)} run(s))")
            add("patch_scaling", file, f"{label}'s patch-wise scaling factor s_j per prompted block over the "
                f"{members[0].grid[0]}×{members[0].grid[1]} patch grid ({where}); one colour scale for every block, "
                "the CLS token's value in each title; below: the mean per block (1 = attention untouched).")

    tasks = list(dict.fromkeys(r.task for r in runs))
    if tasks:
        labels = list(dict.fromkeys(r.label for r in runs))
        panels = []
        for row_metric in ("metric", "ECE"):
            for task in tasks:
                t_runs = [r for r in runs if r.task == task]
                metric = _report_metric(t_runs[0]) if row_metric == "metric" else "ECE"
                shots_list = sorted({r.shots for r in t_runs})
                bars = {}
                for label in labels:
                    vals = []
                    for k in shots_list:
                        members = [r for r in t_runs if r.label == label and r.shots == k]
                        mean, std = _mean_std([records[r.name]["test_metrics"][metric] for r in members
                                               if "test_metrics" in records[r.name]])
                        vals.append((100 * mean, 100 * std))
                    if any(not np.isnan(v[0]) for v in vals):
                        bars[label] = vals
                panels.append({"title": f"{task}: test {metric}" + (" (lower is better)" if metric == "ECE" else ""),
                               "ylabel": f"test {metric} (×100)", "xlabel": "shots",
                               "groups": [f"{k}-shot" for k in shots_list], "bars": bars})
        section = "all tasks"
        file = "results.png"
        figures.grouped_bars(out / file, panels, colors, ncols=len(tasks),
                             title="Test results per method and shot (mean ± std over runs)")
        add("results", file, "Test metric (top: mAP for multi-label tasks, accuracy otherwise) and test ECE "
            "(bottom) per method and shot; bars: mean over runs, whiskers: std.")
    return listed


def _fmt(mean_std: dict, percent: bool = False) -> str:
    """3 significant digits, or ×100 with one decimal (``percent``); ``± std`` when there are several runs."""
    mean, std = mean_std["mean"], mean_std["std"]
    if mean is None:
        return "–"
    number = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.3g}")
    return number(mean) if std is None else f"{number(mean)} ± {number(std)}"


def report_markdown(analysis: dict[str, Any]) -> str:
    """The report: what was analysed, the table of numbers, every figure with a one-line caption."""
    runs = analysis["runs"]
    n_runs = sum(1 for r in runs.values() if r["label"] != figures.PRETRAIN)
    lines = [
        "# Feature analysis: does fine-tuning calibrate the feature distribution?",
        "",
        f"{n_runs} runs from {', '.join(f'`{s}`' for s in analysis['sources'])}, analysed on their test images "
        f"(medpeft {analysis['medpeft_version']}, {analysis['created']}). *pretrain* is the frozen backbone with no "
        "method (the same weights every run started from). Following Zu et al. 2024 (Eq. 11), a method that "
        "calibrates the feature distribution lowers the intra-class scatter and separates the classes better.",
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
            + " |")
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
def _analyze_command(paths, out, class_index, perplexity, max_points, n_splits, device, batch_size):
    """Features, scatter numbers and figures of trained runs (bench or run directories) vs the frozen backbone."""
    analysis = analyze(paths, out, class_index=class_index, perplexity=perplexity, max_points=max_points,
                       n_splits=n_splits, device=device, batch_size=batch_size)
    click.echo(f"analysed {len(analysis['runs'])} models in {analysis['timing_s']['total']:.0f} s; "
               f"wrote {len(analysis['figures'])} figures, {Path(out) / 'analysis.json'} and {Path(out) / 'report.md'}")


command = click.command("analyze")(_analyze_command)
