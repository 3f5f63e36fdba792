"""The analysis figures, drawn with matplotlib's object API on the Agg canvas (headless; pyplot is never imported,
so no global backend is changed). Each function writes one PNG and knows nothing about runs or files beyond it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

DPI = 120
PRETRAIN = "pretrain"
PRETRAIN_COLOR = "#7f7f7f"
CLASS_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4"]


EPT_COLOR = "#d62728"


def method_colors(labels, methods: dict[str, str] | None = None) -> dict[str, str]:
    """A fixed colour per method label, in order of first appearance; ``pretrain`` grey, the first EPT label red.

    ``methods`` maps a label to its method name (default: the label up to a parenthesis).
    """
    from matplotlib import colormaps
    from matplotlib import colors as mcolors

    tab20 = colormaps["tab20"].colors
    skip = {6, 7, 14, 15}  # red (kept for EPT) and grey (pretrain)
    palette = [mcolors.to_hex(tab20[i]) for i in list(range(0, 20, 2)) + list(range(1, 20, 2)) if i not in skip]
    colors, k = {PRETRAIN: PRETRAIN_COLOR}, 0
    for label in labels:
        if label in colors:
            continue
        method = (methods or {}).get(label, label.split("(")[0])
        if method == "ept" and EPT_COLOR not in colors.values():
            colors[label] = EPT_COLOR
            continue
        colors[label] = palette[k % len(palette)]
        k += 1
    return colors


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(max(width, 5.0), max(height, 4.0)), dpi=DPI, layout="constrained")


def _grid(fig, n: int, ncols: int, **kwargs):
    nrows = math.ceil(n / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kwargs)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _panel_grid(
    n: int,
    ncols: int,
    panel: tuple[float, float],
    gap: tuple[float, float],
    margins: tuple[float, float, float, float],
    *,
    axes: bool = True,
    **kwargs,
):
    """A figure of ``n`` panels laid out in fixed inches (no layout engine: many panels stay fast to draw).

    ``panel`` (w, h) and ``gap`` (between columns, between rows) and ``margins`` (left, right, top, bottom) are in
    inches; the gaps hold the tick labels, axis labels and titles. Returns (figure, axes of the n panels, or None
    without ``axes``: then ``fig.add_gridspec`` follows the same layout).
    """
    from matplotlib.figure import Figure

    nrows = math.ceil(n / ncols)
    (w, h), (wg, hg), (left, right, top, bottom) = panel, gap, margins
    width = max(left + right + ncols * w + (ncols - 1) * wg, 5.0)
    height = max(top + bottom + nrows * h + (nrows - 1) * hg, 4.0)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=wg / w,
        hspace=hg / h,
    )
    return fig, (_grid(fig, n, ncols, **kwargs) if axes else None)


def _title_and_legend(fig, title: str, handles, names, ncols: int, **legend_kw) -> None:
    """Figure title at the top, legend centred at the bottom (for :func:`_panel_grid` figures)."""
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    fig.legend(
        handles,
        names,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.04 / height),
        ncols=ncols,
        fontsize=8,
        frameon=False,
        **legend_kw,
    )


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def pca_histograms(
    path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, str]], *, class_name: str, title: str
) -> None:
    """One panel per model: PC1 of all its test features, histogram of class ``class_name`` vs the other images.

    ``panels``: (label, features (n, D), in_class bool (n,), colour). PC1 is fitted on all the model's test
    features and divided by its standard deviation, so the x axis is comparable across models; its sign is
    chosen so the class mean is positive.
    """
    from sklearn.decomposition import PCA

    scores = []
    for _, feats, in_class, _ in panels:
        z = PCA(n_components=1, svd_solver="full").fit_transform(feats)[:, 0]
        z = z / (z.std() or 1.0)
        z = z - z.mean()
        scores.append(-z if z[in_class].mean() < 0 else z)
    lo = min(float(z.min()) for z in scores)
    hi = max(float(z.max()) for z in scores)
    bins = np.linspace(lo, hi, 25)
    ncols = min(4, len(panels))
    fig, axes = _panel_grid(len(panels), ncols, (2.6, 1.8), (0.6, 0.95), (0.6, 0.2, 0.95, 0.85), sharex=True)
    for ax, (label, _, in_class, color), z in zip(axes, panels, scores):
        ax.hist(
            z[~in_class],
            bins=bins,
            histtype="step",
            color="black",
            linewidth=1.0,
            label=f"other images (n={int((~in_class).sum())})",
        )
        ax.hist(z[in_class], bins=bins, color=color, alpha=0.75, label=class_name)
        spread = z[in_class].std() if in_class.sum() > 1 else float("nan")
        ax.set_title(f"{label}\nσ(class) = {spread:.2f}", fontsize=9)
        ax.set_xlabel("PC1 / std(PC1)", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True)
    handles, names = axes[0].get_legend_handles_labels()
    _title_and_legend(fig, title, handles[::-1], names[::-1], 2)
    _save(fig, path)


def tsne_densities(
    path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, str]], group_names: list[str], *, title: str
) -> None:
    """One panel per model: 2-D t-SNE of its test features, points and Gaussian-KDE density contours per group.

    ``panels``: (label, embedding (n, 2), group index (n,), model colour for the title).
    """
    from scipy.stats import gaussian_kde

    ncols = min(4, len(panels))
    fig, axes = _panel_grid(len(panels), ncols, (2.6, 2.4), (0.35, 0.6), (0.35, 0.15, 0.75, 0.7))
    for ax, (label, emb, groups, color) in zip(axes, panels):
        pad = 0.08 * (emb.max(axis=0) - emb.min(axis=0) + 1e-9)
        (x0, y0), (x1, y1) = emb.min(axis=0) - pad, emb.max(axis=0) + pad
        xx, yy = np.meshgrid(np.linspace(x0, x1, 80), np.linspace(y0, y1, 80))
        for g, name in enumerate(group_names):
            pts = emb[groups == g]
            c = CLASS_COLORS[g % len(CLASS_COLORS)]
            if len(pts) >= 5:
                try:  # highest-density regions holding 50% and 80% of the group's points
                    kde = gaussian_kde(pts.T, bw_method=0.7 * len(pts) ** (-1 / 6))
                    dens = kde(np.vstack([xx.ravel(), yy.ravel()])).reshape(xx.shape)
                    at_points = kde(pts.T)
                    top = dens.max() * 1.01
                    for mass, alpha in ((0.8, 0.15), (0.5, 0.3)):
                        level = np.quantile(at_points, 1 - mass)
                        if level < top:
                            ax.contourf(xx, yy, dens, levels=[level, top], colors=[c], alpha=alpha)
                            ax.contour(xx, yy, dens, levels=[level], colors=[c], linewidths=0.7)
                except (np.linalg.LinAlgError, ValueError):
                    pass
            ax.scatter(
                pts[:, 0],
                pts[:, 1],
                s=10,
                color=c,
                edgecolors="white",
                linewidths=0.3,
                label=f"{name} ({len(pts)} images)",
            )
        ax.set_title(label, fontsize=9, color="black")
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.0)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1", fontsize=8)
        ax.set_ylabel("t-SNE 2", fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    _title_and_legend(fig, title, handles, names, min(len(names), 4), markerscale=2)
    _save(fig, path)


def patch_scaling_maps(
    path: Path, layers: list[int], scaling: np.ndarray, grid: tuple[int, int], num_prefix: int, *, title: str
) -> None:
    """Heat maps of s_j over the patch grid, one per prompted block, on one colour scale; a profile below.

    ``scaling`` (L, N): mean s per block and token, prefix tokens (CLS) first. The CLS value is in each title.
    """
    h, w = grid
    patches = scaling[:, num_prefix:].reshape(len(layers), h, w)
    vmin, vmax = float(patches.min()), float(patches.max())
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    ncols = min(6, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = _figure(1.9 * ncols + 1.0, 1.95 * nrows + 2.6)
    sub = fig.subfigures(2, 1, height_ratios=[1.95 * nrows, 2.4])
    axes = _grid(sub[0], len(layers), ncols)
    image = None
    for ax, layer, grid_s, row in zip(axes, layers, patches, scaling):
        image = ax.imshow(grid_s, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        cls = f", CLS {row[0]:.3f}" if num_prefix else ""
        ax.set_title(f"block {layer}{cls}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    sub[0].colorbar(image, ax=list(axes), shrink=0.9, label="$s_j$ of the patch token")
    sub[0].supxlabel("patch column", fontsize=8)
    sub[0].supylabel("patch row", fontsize=8)
    ax = sub[1].subplots()
    x = np.arange(len(layers))
    ax.fill_between(
        x,
        patches.reshape(len(layers), -1).min(axis=1),
        patches.reshape(len(layers), -1).max(axis=1),
        color="#2a788e",
        alpha=0.25,
        label="patches, min–max over the grid",
    )
    ax.plot(x, patches.reshape(len(layers), -1).mean(axis=1), "o-", color="#2a788e", label="patches, mean")
    if num_prefix:
        ax.plot(x, scaling[:, 0], "s--", color="#d95f02", label="CLS")
    ax.set_xticks(x, [str(layer) for layer in layers], fontsize=8)
    ax.set_xlabel("prompted block")
    ax.set_ylabel("mean $s_j$")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def mass_curves(path: Path, lines: dict[str, dict], *, title: str) -> None:
    """Prompt mass share per block: ``lines[name] = {"layers": [...], "init"/"trained": {"mean", "min", "max"}}``;
    init dashed, trained solid with its min–max band, one colour per line."""
    from matplotlib import colormaps

    fig = _figure(7.5, 4.2)
    ax = fig.subplots()
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(lines)))
    for (name, line), color in zip(lines.items(), colors):
        x = np.asarray(line["layers"])
        ax.plot(x, line["init"]["mean"], "--", color=color, alpha=0.8)
        ax.plot(x, line["trained"]["mean"], "o-", color=color, label=name, markersize=3)
        ax.fill_between(x, line["trained"]["min"], line["trained"]["max"], color=color, alpha=0.12)
    ax.plot([], [], "--", color="grey", label="at initialisation")
    ax.set_xlabel("block")
    ax.set_ylabel("share of attention mass on the prompt")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def convergence_curves(
    path: Path,
    series: dict[str, list[dict[str, list[float]]]],
    panels: list[tuple[str, str]],
    colors: dict[str, str],
    *,
    title: str,
) -> None:
    """Per panel (key, y label): each method's mean over its runs per epoch, the min–max band across runs.

    ``series``: label -> list of runs, each run a dict key -> values per epoch.
    """
    fig = _figure(3.6 * len(panels) + 1.8, 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, ylabel) in zip(axes, panels):
        for label, runs in series.items():
            curves = [r[key] for r in runs if r.get(key)]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            table = np.full((len(curves), length), np.nan)
            for i, c in enumerate(curves):
                table[i, : len(c)] = c
            epochs = np.arange(1, length + 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)
            ax.plot(
                epochs, mean, "-o", markersize=3, color=colors[label], linewidth=1.4, label=f"{label} (n={len(curves)})"
            )
            if len(curves) > 1:
                ax.fill_between(epochs, lo, hi, color=colors[label], alpha=0.18, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def grouped_bars(path: Path, panels: list[dict], colors: dict[str, str], *, title: str, ncols: int) -> None:
    """Bar panels: each ``{"title", "ylabel", "xlabel", "groups": [group name], "bars": {label: [(mean, std)]}}``.

    Bars of one group sit side by side, one colour per label; std (nan: none) as error bars.
    """
    nrows = math.ceil(len(panels) / ncols)
    n_labels = max(len(p["bars"]) for p in panels)
    n_groups = max(len(p["groups"]) for p in panels)
    span = max(3.2, 0.22 * n_labels * n_groups + 1.0)
    fig = _figure(span * ncols + 1.8, 3.0 * nrows + 0.6)
    axes = _grid(fig, len(panels), ncols)
    for ax, panel in zip(axes, panels):
        labels = list(panel["bars"])
        width = 0.8 / max(len(labels), 1)
        x = np.arange(len(panel["groups"]))
        for j, label in enumerate(labels):
            values = np.array([v[0] for v in panel["bars"][label]], dtype=float)
            errors = np.array([v[1] for v in panel["bars"][label]], dtype=float)
            err = None if np.all(np.isnan(errors)) else np.nan_to_num(errors)
            ax.bar(
                x - 0.4 + width * (j + 0.5), values, width=width, yerr=err, color=colors[label], label=label, capsize=2
            )
        ax.set_xticks(x, panel["groups"])
        ax.set_ylabel(panel["ylabel"], fontsize=9)
        ax.set_xlabel(panel.get("xlabel", ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=8)
    seen = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(name, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def labelled_bars(path: Path, panels: list[dict], colors: dict[str, str], *, title: str) -> None:
    """Horizontal bars, one per label (top to bottom), one panel per number:
    each ``{"title", "xlabel", "values": {label: (mean, std)}, "better": "lower"|"higher"|None}`` and optionally
    ``chance`` (a dotted line) and ``xmax``. A dashed grey line marks the pretrain value."""
    labels = list(panels[0]["values"])
    fig = _figure(3.0 * len(panels) + 1.4, 0.28 * len(labels) + 1.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = np.arange(len(labels))
    for ax, panel in zip(axes, panels):
        values = np.array([panel["values"][k][0] for k in labels], dtype=float)
        errors = np.array([panel["values"][k][1] for k in labels], dtype=float)
        err = None if np.all(np.isnan(errors)) else np.nan_to_num(errors)
        ax.barh(y, np.nan_to_num(values), xerr=err, color=[colors[k] for k in labels], capsize=2)
        for yi, v, e in zip(y, values, np.nan_to_num(errors)):
            ax.text(0 if np.isnan(v) else v + e, yi, " n/a" if np.isnan(v) else f" {v:.3g}", va="center", fontsize=7)
        if PRETRAIN in panel["values"] and not np.isnan(panel["values"][PRETRAIN][0]):
            ax.axvline(panel["values"][PRETRAIN][0], color=PRETRAIN_COLOR, linestyle="--", linewidth=1)
        if panel.get("chance") is not None:
            ax.axvline(panel["chance"], color="black", linestyle=":", linewidth=1)
        better = panel.get("better")
        ax.set_title(panel["title"] + (f"\n({better} is better)" if better else ""), fontsize=9)
        ax.set_xlabel(panel["xlabel"], fontsize=8)
        ax.set_xlim(
            0,
            panel["xmax"] * 1.15
            if panel.get("xmax")
            else np.nanmax(np.append(values + np.nan_to_num(errors), 1e-9)) * 1.3,
        )
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("model")
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def reliability_diagrams(
    path: Path,
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float, str]],
    *,
    multilabel: bool,
    num_classes: int,
    title: str,
) -> None:
    """One reliability diagram per model: ``(label, bin confidence, bin accuracy, bin count, ECE, colour)``.

    Bars: observed frequency per confidence bin; hatched: the gap to the bin's mean confidence; dashed: perfect
    calibration. Below each, the share of predictions per bin. Empty bins are left out. Multi-class top-label
    confidence is at least 1/C, so the x axis starts there.
    """
    ncols = min(4, len(panels))
    fig, _ = _panel_grid(len(panels), ncols, (2.3, 2.6), (0.6, 0.95), (0.6, 0.2, 0.95, 0.7), axes=False)
    grid = fig.add_gridspec(math.ceil(len(panels) / ncols), ncols)
    n_bins = len(panels[0][1])
    edges = np.linspace(0, 1, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    x0 = 0.0 if multilabel else math.floor(10 / num_classes) / 10
    first = None
    for i, (label, conf, acc, count, ece, color) in enumerate(panels):
        inner = grid[divmod(i, ncols)].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.12)
        ax = fig.add_subplot(inner[0])
        share = fig.add_subplot(inner[1], sharex=ax)
        filled = count > 0
        ax.bar(
            centers[filled],
            acc[filled],
            width=1 / n_bins,
            color=color,
            edgecolor="black",
            linewidth=0.4,
            label="observed frequency",
        )
        ax.bar(
            centers[filled],
            conf[filled] - acc[filled],
            bottom=acc[filled],
            width=1 / n_bins,
            fill=False,
            hatch="///",
            edgecolor="#d62728",
            linewidth=0.4,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="black", linewidth=0.8, label="perfect calibration")
        ax.set_xlim(x0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}\nECE {100 * ece:.1f}", fontsize=9)
        ax.set_ylabel("fraction positive" if multilabel else "accuracy", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=False)
        share.bar(centers, count / max(count.sum(), 1), width=1 / n_bins, color="#888888")
        share.set_ylim(0, 1)
        share.set_yticks([0, 0.5, 1])
        share.set_ylabel("share", fontsize=7)
        share.set_xlabel("predicted probability" if multilabel else "confidence (max prob.)", fontsize=8)
        share.tick_params(labelsize=7)
        first = first or ax
    handles, names = first.get_legend_handles_labels()
    _title_and_legend(fig, title, handles, names, 3)
    _save(fig, path)


def search_curves(path: Path, panels: list[dict], colors: dict[str, str], *, title: str) -> None:
    """Metric against a searched value, one panel per ``{"title", "xlabel", "ylabel", "x": [values],
    "lines": {label: {"test": [(mean, std)], "val": [(mean, std)]}}}``: test solid with a ±std band, validation
    dashed. Numeric values spanning a factor > 20 get a log axis; others are categories."""
    ncols = min(len(panels), 3)
    fig = _figure(4.2 * ncols + 1.8, 3.3 * math.ceil(len(panels) / ncols) + 0.6)
    for ax, panel in zip(_grid(fig, len(panels), ncols), panels):
        values = panel["x"]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
        xs = np.array(values, dtype=float) if numeric else np.arange(len(values))
        for label, line in panel["lines"].items():
            for key, style in (("test", "-o"), ("val", "--s")):
                points = np.array(line[key], dtype=float)
                if np.isnan(points[:, 0]).all():
                    continue
                ax.plot(
                    xs,
                    points[:, 0],
                    style,
                    color=colors[label],
                    markersize=3.5,
                    linewidth=1.4,
                    alpha=1.0 if key == "test" else 0.6,
                    label=f"{label} ({key})",
                )
                if key == "test" and not np.isnan(points[:, 1]).all():
                    ax.fill_between(
                        xs,
                        points[:, 0] - points[:, 1],
                        points[:, 0] + points[:, 1],
                        color=colors[label],
                        alpha=0.15,
                        linewidth=0,
                    )
        if numeric and xs.max() / xs.min() > 20:
            ax.set_xscale("log")
        ax.set_xticks(xs, [str(v) for v in values], fontsize=7)
        ax.minorticks_off()
        ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"])
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
