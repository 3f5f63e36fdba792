"""The real study's figures for the docs, from its committed records (the same selected runs the report reads):

- ``docs/figures/accuracy_vs_shots.png``: test accuracy against shots per method, mean ± sample std over the
  samplings (error bars), one panel per dataset;
- ``docs/figures/ece_temperature.png``: each method's mean test ECE before and after temperature scaling (fitted
  on the validation images), one panel per dataset.

Run from the repository root: ``python studies/real/figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from report import DATASETS, HERE, METHODS, ROOT, SHOTS, load, read_index  # noqa: E402

from medpeft.stats import mean_std  # noqa: E402

OUT = ROOT / "docs" / "figures"


def _finite(values) -> np.ndarray:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    return values[np.isfinite(values)]


def studies() -> dict[str, dict]:
    """``{dataset title: rows}`` of the methods (no floors, no control), as :func:`report.load` reads them."""
    found = {}
    for folder, title in DATASETS.items():
        rows = load(HERE / folder, read_index(HERE / folder / "bench"))
        found[title.split()[0]] = {m: rows[m] for m in METHODS if m in rows}
    return found


def accuracy_vs_shots(data: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), sharey=True, squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], data.items()):
        for i, (method, cells) in enumerate(rows.items()):
            acc = [
                100 * np.array(mean_std(c["accuracy"] for (k, _), c in cells.items() if k == shots)) for shots in SHOTS
            ]
            x = np.arange(len(SHOTS)) + (i - len(rows) / 2) * 0.03
            ax.errorbar(
                x,
                [mean for mean, _ in acc],
                yerr=[0 if np.isnan(std) else std for _, std in acc],
                marker="o",
                capsize=3,
                label=method,
                lw=2.5 if method == "ept" else 1,
            )
        ax.set_xticks(range(len(SHOTS)), [f"{k}-shot" for k in SHOTS])
        ax.set_title(dataset)
        ax.set_ylabel("test accuracy (%), mean ± std over samplings")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def ece_temperature(data: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), sharey=True, squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], data.items()):
        x = np.arange(len(rows))
        before = [100 * _finite([c["ECE"] for c in cells.values()]).mean() for cells in rows.values()]
        after = [100 * _finite([c["ECE_cal"] for c in cells.values()]).mean() for cells in rows.values()]
        ax.bar(x - 0.2, before, 0.4, label="ECE")
        ax.bar(x + 0.2, after, 0.4, label="ECE after temperature scaling")
        ax.set_xticks(x, list(rows), rotation=45)
        ax.set_title(dataset)
        ax.set_ylabel("test ECE ×100, mean over all cells")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = studies()
    accuracy_vs_shots(data, OUT / "accuracy_vs_shots.png")
    ece_temperature(data, OUT / "ece_temperature.png")
    print(f"wrote {OUT / 'accuracy_vs_shots.png'} and {OUT / 'ece_temperature.png'}")


if __name__ == "__main__":
    main()
