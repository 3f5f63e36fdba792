"""Floors: what plain classifiers reach on exactly a bench's splits, to read every method's numbers against.

- ``pixels``: logistic regression on the standardised greyscale pixels, square-resized to 32 × 32;
- ``cls`` and ``mean``: logistic regression on the frozen backbone's final-norm tokens (the CLS token the linear
  head reads, or the mean of the patch tokens), images square-resized as at test time, no augmentation: what a
  converged linear probe gives;
- ``metadata``: a random forest on what each image file says about itself (width, height, aspect, greyscale or
  colour): the shortcut a model could learn instead of the anatomy (Br35H's classes differ in file geometry).

Each is fitted on a run's training images; its setting (C, or the forest's minimum leaf size) is chosen on the
run's validation images by the task's selection metric (ties: the first in the grid); the test set is scored once
with :func:`medpeft.metrics.task_metrics`. Multi-label tasks fit one classifier per class.
``medpeft floors --config BENCH.yaml --out DIR`` runs them over a bench config's grid (:func:`run_floors`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics
from .data import DatasetSplits, Samples, eval_dataset, read_image
from .errors import UserError
from .files import json_line, write_text
from .stats import format_mean_std, mean_std

PIXEL_SIZE = 32
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
LEAF_GRID = (1, 2, 5)
TITLES = {
    "pixels": "raw pixels (32 × 32 grey) + logistic regression",
    "cls": "frozen backbone, CLS token + logistic regression",
    "mean": "frozen backbone, mean-pooled patch tokens + logistic regression",
    "metadata": "file metadata (width, height, aspect, mode) + random forest",
}
FLOORS = tuple(TITLES)


def pixels(samples: Samples) -> np.ndarray:
    """(n, 32²) greyscale pixels in [0, 1] of each image square-resized (bicubic)."""
    rows = [
        np.asarray(read_image(s).convert("L").resize((PIXEL_SIZE, PIXEL_SIZE), Image.BICUBIC), np.float64)
        for s in samples.sources
    ]
    return np.stack(rows).reshape(len(rows), -1) / 255


def file_metadata(samples: Samples) -> np.ndarray:
    """(n, 4) per image, from its file's header: width, height, aspect (w / h), 1 for a greyscale file."""
    files = samples.files
    if files is None:
        raise UserError("the metadata floor needs the image files, and this dataset holds decoded arrays")
    rows = []
    for path in files:
        try:
            with Image.open(path) as img:
                rows.append((img.width, img.height, img.width / img.height, float(img.mode in ("L", "I", "I;16"))))
        except OSError as err:
            raise UserError(f"cannot read image {path}: {err}") from None
    return np.array(rows, dtype=np.float64)


@torch.no_grad()
def backbone_tokens(model, samples: Samples, img_size: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(cls, mean)``, (n, D) each: the frozen backbone's final-norm CLS token and the mean of its patch tokens
    (a backbone whose features are a spatial map gives its average for both)."""
    backbone = model.backbone.eval()
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    cls, mean = [], []
    normalised = eval_dataset(samples, img_size, mean=model.preprocessing.mean, std=model.preprocessing.std)
    for images, _, _ in DataLoader(normalised, batch_size=batch_size):
        tokens = backbone.forward_features(images).float()
        if tokens.ndim == 4:  # (B, H, W, D)
            cls.append(tokens.mean(dim=(1, 2)))
            mean.append(cls[-1])
        else:
            cls.append(tokens[:, 0])
            mean.append(tokens[:, prefix:].mean(dim=1))
    return torch.cat(cls).double().numpy(), torch.cat(mean).double().numpy()


class Representations:
    """How each floor turns a sample set into a feature matrix; backbone tokens computed once per image name."""

    def __init__(self, model_factory: Callable[[], torch.nn.Module] | None = None, img_size: int | None = None):
        self.model_factory, self.img_size, self.model = model_factory, img_size, None
        self.tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, floor: str, samples: Samples) -> np.ndarray:
        if floor == "pixels":
            return pixels(samples)
        if floor == "metadata":
            return file_metadata(samples)
        if self.model_factory is None:
            raise UserError(f"floor {floor!r} needs a backbone")
        if self.model is None:
            self.model = self.model_factory()
        todo = list(dict.fromkeys(i for i, name in enumerate(samples.names) if name not in self.tokens))
        if todo:
            cls, mean = backbone_tokens(self.model, samples.subset(todo), self.img_size)
            self.tokens.update((samples.names[i], (c, m)) for i, c, m in zip(todo, cls, mean))
        which = 0 if floor == "cls" else 1
        return np.stack([self.tokens[name][which] for name in samples.names])


@dataclass
class Fitted:
    """A floor fitted on one split: the chosen setting, its validation score and the test metrics."""

    setting: float
    val_score: float
    test: dict[str, float]


def _classifier(floor: str, setting: float, multilabel: bool):
    if floor == "metadata":
        model = RandomForestClassifier(n_estimators=200, min_samples_leaf=int(setting), random_state=0)
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=setting, max_iter=5000))
    return OneVsRestClassifier(model) if multilabel else model


def _probabilities(model, x: np.ndarray, data: DatasetSplits) -> np.ndarray:
    probs = model.predict_proba(x)
    if data.task.multilabel:
        return probs
    full = np.zeros((len(x), data.task.num_classes))  # a class absent from training gets probability 0
    full[:, model.classes_] = probs
    return full


def fit_floor(floor: str, data: DatasetSplits, represent: Representations) -> Fitted:
    """Fit ``floor`` on ``data.train``, choose its setting on ``data.val``, score ``data.test``."""
    task = data.task
    x = {part: represent(floor, getattr(data, part)) for part in ("train", "val", "test")}
    best = None
    for setting in LEAF_GRID if floor == "metadata" else C_GRID:
        model = _classifier(floor, setting, task.multilabel).fit(x["train"], data.train.labels)
        score = metrics.task_metrics(_probabilities(model, x["val"], data), data.val.labels, task.multilabel)[
            task.selection_metric
        ]
        if best is None or score > best[1]:
            best = (setting, score, model)
    setting, score, model = best
    test = metrics.task_metrics(_probabilities(model, x["test"], data), data.test.labels, task.multilabel)
    return Fitted(setting, score, test)


def run_floors(config, out: str | Path, floors: list[str], progress: bool = True) -> list[dict]:
    """Every floor on every split of the bench ``config`` (its tasks × shots × experiments × seeds, validation
    capped as its runs are); writes ``OUT/floors.jsonl`` and ``OUT/floors.md``; returns the rows."""
    from .experiment import load_splits
    from .model import build_model

    unknown = sorted(set(floors) - set(FLOORS))
    if unknown:
        raise UserError(f"unknown floor(s) {unknown}: choose from {', '.join(FLOORS)}")
    first = next(config.specs())
    represent = Representations(
        lambda: build_model(
            "linear", first.backbone, 2, pretrained=first.pretrained, weights=first.weights, img_size=first.img_size
        ).eval(),
        first.img_size or 224,
    )
    cells = list(dict.fromkeys((s.task, s.shots, s.exp, s.seed) for s in config.specs()))
    rows = []
    for task, shots, exp, seed in tqdm(cells, desc="floors", disable=not progress or None):
        spec = next(s for s in config.specs() if (s.task, s.shots, s.exp, s.seed) == (task, shots, exp, seed))
        data = load_splits(spec)
        for floor in floors:
            fitted = fit_floor(floor, data, represent)
            rows.append(
                {
                    "floor": floor,
                    "task": task,
                    "shots": shots,
                    "exp": exp,
                    "seed": seed,
                    "setting": fitted.setting,
                    "val_score": fitted.val_score,
                    "test": fitted.test,
                }
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "floors.jsonl", "".join(json_line(r) for r in rows))
    write_text(out / "floors.md", floors_markdown(rows, first.backbone if {"cls", "mean"} & set(floors) else None))
    return rows


def floors_markdown(rows: list[dict], backbone: str | None) -> str:
    """Mean ± sample std over samplings and seeds of every test metric, per floor × task × shots."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["floor"], r["task"], r["shots"]), []).append(r)
    names = list(dict.fromkeys(k for r in rows for k in r["test"]))
    lines = [
        "# Floors",
        "",
        "Test metrics ×100, mean ± sample std over samplings, of plain classifiers on exactly "
        "the bench's splits (setting chosen on its validation images)"
        + (f"; backbone features from {backbone}." if backbone else "."),
        "",
        "| floor | task | shots | runs | " + " | ".join(names) + " | settings chosen |",
        "|---|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for (floor, task, shots), group in groups.items():
        cells = []
        for name in names:
            cells.append(format_mean_std(*mean_std(g["test"][name] for g in group), ".2f", 100))
        chosen = ", ".join(f"{g['setting']:g}" for g in group)
        lines.append(f"| {TITLES[floor]} | {task} | {shots} | {len(group)} | " + " | ".join(cells) + f" | {chosen} |")
    return "\n".join(lines) + "\n"
