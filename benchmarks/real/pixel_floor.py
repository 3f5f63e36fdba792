"""The floors under the real study: logistic regression on raw pixels, and on the frozen backbone's features, on
exactly the study's splits.

For each K-shot training set and sampling of the study (``medpeft.data.load_medmnist``, seeded as medpeft draws
it), the validation set capped as the study's (``--val-per-class``), a logistic regression on the standardised
28×28 pixels, its inverse regularisation C chosen on validation from a grid (ties: the first), then the test
metrics of medpeft's own definitions (``medpeft.metrics.task_metrics``). With ``--weights``, the same on the frozen
backbone's features (the final-norm CLS token the linear head reads; images square-resized as at test time, no
augmentation): what a converged linear probe on those features gives. Writes ``pixel_floor.json`` (and
``feature_floor.json``) and Markdown tables of mean ± sample std over the samplings.

Run from the repository root: ``python benchmarks/real/pixel_floor.py --out benchmarks/real/floor
--weights benchmarks/real/dinov2_s.safetensors`` (about a minute on 2 CPU cores; seconds without ``--weights``).
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

SHOTS, EXPS = (1, 5, 10), (1, 2, 3, 4, 5)

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(s, dtype=np.float64).reshape(-1) for s in samples.sources])


class Features:
    """The frozen backbone's features of a sample set (``forward_features``: the final-norm CLS token), by name."""

    def __init__(self, weights: str, backbone: str, img_size: int):
        from medpeft import build_model

        self.model = build_model("linear", backbone, 2, pretrained=False, weights=weights, img_size=img_size).eval()
        self.img_size = img_size
        self.known: dict[str, np.ndarray] = {}

    def __call__(self, samples) -> np.ndarray:
        from medpeft.analysis.extract import forward_pass

        todo = [i for i, name in enumerate(samples.names) if name not in self.known]
        if todo:
            rows = forward_pass(self.model, samples.subset(todo), None, self.img_size, head=False, maps=False).features
            self.known.update(zip((samples.names[i] for i in todo), rows.astype(np.float64)))
        return np.stack([self.known[name] for name in samples.names])


def one_split(data_root: str, shots: int, exp: int, val_per_class: int, represent=pixels, seed: int = 0) -> dict:
    data = load_medmnist(data_root, shots, exp, seed=seed).with_val_per_class(val_per_class, seed=(seed, exp))
    scaler = StandardScaler().fit(represent(data.train))
    train, val, test = (scaler.transform(represent(s)) for s in (data.train, data.val, data.test))
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(train, data.train.labels)
        score = task_metrics(model.predict_proba(val), data.val.labels, False)["accuracy"]
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return {"shots": shots, "exp": exp, "C": c, "val_accuracy": score,
            "test": task_metrics(model.predict_proba(test), data.test.labels, False)}


def table(runs: list[dict], title: str) -> list[str]:
    lines = [f"| {title} | accuracy | AUC | ECE | Brier | C chosen |", "|---|---|---|---|---|---|"]
    for k in SHOTS:
        mine = [r for r in runs if r["shots"] == k]
        cells = []
        for metric in ("accuracy", "AUC", "ECE", "Brier"):
            values = 100 * np.array([r["test"][metric] for r in mine])
            cells.append(f"{values.mean():.2f} ± {values.std(ddof=1):.2f}")
        lines.append(f"| {k}-shot | " + " | ".join(cells) + f" | {', '.join(str(r['C']) for r in mine)} |")
    return lines


@click.command()
@click.option("--data-root", default="tests/data/pneumoniamnist.npz", show_default=True)
@click.option("--val-per-class", default=10, show_default=True)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Also the frozen backbone's features.")
@click.option("--backbone", default="vit_small_patch14_dinov2", show_default=True)
@click.option("--img-size", default=112, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def main(data_root, val_per_class, weights, backbone, img_size, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    floors = [("pixel_floor", "raw pixels + logistic regression", pixels)]
    if weights:
        floors.append(("feature_floor", f"frozen {backbone} CLS features ({img_size} px) + logistic regression",
                       Features(weights, backbone, img_size)))
    for name, title, represent in floors:
        runs = [one_split(data_root, k, e, val_per_class, represent) for k in SHOTS for e in EXPS]
        (out / f"{name}.json").write_text(json.dumps(runs, indent=2) + "\n")
        lines = table(runs, title)
        (out / f"{name}.md").write_text("\n".join(lines) + "\n")
        click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
