"""The floor under the real study: logistic regression on raw pixels, on exactly the study's splits.

For each K-shot training set and sampling of the study (``medpeft.data.load_medmnist``, seeded as medpeft draws
it), the validation set capped as the study's (``--val-per-class``), a logistic regression on the standardised
28×28 pixels, its inverse regularisation C chosen on validation from a grid (ties: the first), then the test
metrics of medpeft's own definitions (``medpeft.metrics.task_metrics``). Writes ``pixel_floor.json`` and a Markdown
table of mean ± sample std over the samplings.

Run from the repository root: ``python benchmarks/real/pixel_floor.py --out benchmarks/real/floor`` (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medpeft.data import load_medmnist
from medpeft.metrics import task_metrics

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(s, dtype=np.float64).reshape(-1) for s in samples.sources])


def one_split(data_root: str, shots: int, exp: int, val_per_class: int, seed: int = 0) -> dict:
    data = load_medmnist(data_root, shots, exp, seed=seed).with_val_per_class(val_per_class, seed=(seed, exp))
    scaler = StandardScaler().fit(pixels(data.train))
    train, val, test = (scaler.transform(pixels(s)) for s in (data.train, data.val, data.test))
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(train, data.train.labels)
        score = task_metrics(model.predict_proba(val), data.val.labels, False)["accuracy"]
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return {"shots": shots, "exp": exp, "C": c, "val_accuracy": score,
            "test": task_metrics(model.predict_proba(test), data.test.labels, False)}


@click.command()
@click.option("--data-root", default="tests/data/pneumoniamnist.npz", show_default=True)
@click.option("--val-per-class", default=10, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def main(data_root, val_per_class, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [one_split(data_root, k, e, val_per_class) for k in (1, 5, 10) for e in (1, 2, 3, 4, 5)]
    (out / "pixel_floor.json").write_text(json.dumps(runs, indent=2) + "\n")
    lines = ["| raw pixels + logistic regression | accuracy | AUC | ECE | Brier | C chosen |", "|---|---|---|---|---|---|"]
    for k in (1, 5, 10):
        mine = [r for r in runs if r["shots"] == k]
        cells = []
        for metric in ("accuracy", "AUC", "ECE", "Brier"):
            values = 100 * np.array([r["test"][metric] for r in mine])
            cells.append(f"{values.mean():.2f} ± {values.std(ddof=1):.2f}")
        lines.append(f"| {k}-shot | " + " | ".join(cells) + f" | {', '.join(str(r['C']) for r in mine)} |")
    (out / "pixel_floor.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
