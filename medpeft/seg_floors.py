"""Segmentation floors: what intensity thresholds and a per-pixel linear model reach on exactly a run's splits.

Both read each image as 8-bit grey (colour images by ITU-R 601-2 luma, as PIL's ``convert("L")``), use only the
run's few-shot training images (and validation images to choose a setting) and are scored on its test images with
:func:`medpeft.seg_metrics.segmentation_metrics`. Masks hold class indices 0 ... C-1 (``ignore_index`` pixels are
left out of fitting and scoring).

- ``otsu``: each image is cut by its own (multi-)Otsu thresholds into C intensity regions (C - 1 thresholds
  minimising the within-region variance of the grey levels, i.e. maximising Otsu's between-class variance; a
  threshold t sends the grey levels <= t down; thresholds lie on grey levels present in the image, so two
  threshold sets never give the same partition; with fewer than C grey levels each level is a region). Region r
  (the r-th darkest) is then given the class most frequent in region r over the training images' pixels (ties:
  the lower class). No probabilities, so no ECE.
- ``logreg``: multinomial logistic regression (scikit-learn, standardised features) of each pixel's class on
  its grey level and position (row and column, each scaled to [0, 1] by the image's size), fitted on every
  training pixel; C of the grid chosen on the validation images by mIoU (ties: the first in the grid). Its
  softmax probabilities give the pixel ECE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .errors import UserError
from .files import json_line, write_text
from .floors import C_GRID
from .seg_metrics import segmentation_metrics
from .stats import format_mean_std, mean_std

TITLES = {
    "otsu": "per-image (multi-)Otsu thresholds, regions named by the training masks",
    "logreg": "per-pixel logistic regression on grey level and position",
}
SEG_FLOORS = tuple(TITLES)


def grey(image) -> np.ndarray:
    """An (H, W) grey uint8 array of an (H, W) or (H, W, 3) uint8 image (PIL's ``convert("L")``)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise UserError(f"the floors read 8-bit grey or RGB images, got {image.dtype} of shape {image.shape}")
    return image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))


def otsu_thresholds(values, n_regions: int) -> np.ndarray:
    """The ``n_regions - 1`` multi-Otsu thresholds (ascending grey levels present in ``values``) minimising the
    summed within-region squared deviation of ``values``; exact (dynamic programming over the distinct levels)."""
    levels, counts = np.unique(np.asarray(values).ravel(), return_counts=True)
    if len(levels) <= n_regions:
        return levels[:-1]
    w = np.concatenate([[0], np.cumsum(counts, dtype=np.float64)])
    s = np.concatenate([[0], np.cumsum(counts * levels.astype(np.float64))])
    q = np.concatenate([[0], np.cumsum(counts * levels.astype(np.float64) ** 2)])
    m = len(levels)

    def sse(i, j):  # levels i..j-1 (arrays of start i, end j) as one region
        return q[j] - q[i] - (s[j] - s[i]) ** 2 / (w[j] - w[i])

    # best[k, j]: least cost of levels 0..j-1 cut into k + 1 regions; cut[k, j]: where its last region starts
    best = np.full((n_regions, m + 1), np.inf)
    cut = np.zeros((n_regions, m + 1), np.int64)
    best[0, 1:] = sse(np.zeros(m, np.int64), np.arange(1, m + 1))
    for k in range(1, n_regions):
        for j in range(k + 1, m + 1):
            starts = np.arange(k, j)
            total = best[k - 1, starts] + sse(starts, np.full(len(starts), j))
            cut[k, j] = starts[np.argmin(total)]
            best[k, j] = total.min()
    ends, j = [], m
    for k in range(n_regions - 1, 0, -1):
        j = cut[k, j]
        ends.append(j)
    return levels[np.array(ends[::-1]) - 1]


def otsu_regions(image, n_regions: int) -> np.ndarray:
    """(H, W) region index of each pixel: how many of the image's own thresholds its grey level exceeds."""
    g = grey(image)
    return np.searchsorted(otsu_thresholds(g, n_regions), g, side="left")


def otsu_floor(train, test, num_classes: int, ignore_index: int = 255, class_names=None) -> dict[str, float]:
    """Test metrics of the ``otsu`` floor; ``train`` and ``test`` are ``(images, masks)`` pairs of lists."""
    votes = np.zeros((num_classes, num_classes), np.int64)  # region x class
    for image, mask in zip(*train):
        mask = np.asarray(mask)
        keep = mask != ignore_index
        regions = otsu_regions(image, num_classes)
        np.add.at(votes, (regions[keep], mask[keep].astype(np.int64)), 1)
    class_of_region = votes.argmax(axis=1)
    preds = [class_of_region[otsu_regions(image, num_classes)] for image in test[0]]
    return segmentation_metrics(preds, list(test[1]), num_classes, ignore_index=ignore_index, class_names=class_names)


def pixel_features(image) -> np.ndarray:
    """(H * W, 3): grey level / 255, (row + 0.5) / H and (column + 0.5) / W of each pixel, row-major."""
    g = grey(image).astype(np.float64)
    h, w = g.shape
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([g.ravel() / 255, (rows.ravel() + 0.5) / h, (cols.ravel() + 0.5) / w], axis=1)


def _probabilities(model, images, num_classes: int) -> list[np.ndarray]:
    """(C, H, W) class probabilities of each image (classes the training pixels lack get 0)."""
    out = []
    for image in images:
        p = model.predict_proba(pixel_features(image))
        full = np.zeros((len(p), num_classes))
        full[:, model.classes_] = p
        out.append(full.T.reshape(num_classes, *grey(image).shape))
    return out


def logistic_floor(
    train, val, test, num_classes: int, ignore_index: int = 255, class_names=None, c_grid=C_GRID, seed: int = 0
) -> dict[str, float]:
    """Test metrics (with pixel ECE) of the ``logreg`` floor; ``train``/``val``/``test`` are ``(images, masks)``.
    The chosen C is returned under ``"C"``."""
    x = np.concatenate([pixel_features(i) for i in train[0]])
    y = np.concatenate([np.asarray(m).ravel() for m in train[1]]).astype(np.int64)
    keep = y != ignore_index
    x, y = x[keep], y[keep]
    if np.unique(y).size < 2:
        raise UserError("the logistic-regression floor needs at least two classes among the training pixels")

    def fit(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=seed)).fit(x, y)

    def score(model, split, with_probs=False):
        probs = _probabilities(model, split[0], num_classes)
        preds = [p.argmax(axis=0) for p in probs]
        return segmentation_metrics(
            preds,
            list(split[1]),
            num_classes,
            probs=probs if with_probs else None,
            ignore_index=ignore_index,
            class_names=class_names,
        )

    models = [fit(c) for c in c_grid]
    val_miou = [score(m, val)["mIoU"] for m in models]
    chosen = int(np.argmax(np.nan_to_num(val_miou, nan=-1.0)))
    return {**score(models[chosen], test, with_probs=True), "C": float(c_grid[chosen])}


def seg_floors(train, val, test, num_classes: int, ignore_index: int = 255, class_names=None) -> dict[str, dict]:
    """``{"otsu": metrics, "logreg": metrics}`` of one run's splits (each an ``(images, masks)`` pair)."""
    return {
        "otsu": otsu_floor(train, test, num_classes, ignore_index, class_names),
        "logreg": logistic_floor(train, val, test, num_classes, ignore_index, class_names),
    }


def _arrays(samples, task) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(grey images, class-index masks) of a split of a segmentation dataset."""
    from .data import read_image
    from .data.seg import read_mask

    return [grey(np.asarray(read_image(s))) for s in samples.sources], [read_mask(m, task) for m in samples.masks]


def run_seg_floors(config, out, progress: bool = True) -> list[dict]:
    """Both floors on every split of the bench ``config`` (tasks × shots × experiments × seeds, as its runs load
    them); writes ``OUT/floors.jsonl`` and ``OUT/floors.md`` (rows as :func:`medpeft.floors.run_floors` writes
    them, ``setting``: logistic regression's C, none for Otsu) and returns the rows."""
    from tqdm.auto import tqdm

    from .experiment import load_splits

    specs = list(config.specs())
    cells = list(dict.fromkeys((s.task, s.shots, s.exp, s.seed) for s in specs))
    rows = []
    for cell in tqdm(cells, desc="seg floors", disable=not progress or None):
        data = load_splits(next(s for s in specs if (s.task, s.shots, s.exp, s.seed) == cell))
        splits = [_arrays(getattr(data, part), data.task) for part in ("train", "val", "test")]
        names, c = list(data.task.classes), len(data.task.classes)
        logreg = logistic_floor(*splits, c, class_names=names)
        tests = {"otsu": otsu_floor(splits[0], splits[2], c, class_names=names), "logreg": logreg}
        for floor, test in tests.items():
            setting = test.pop("C", None)
            rows.append(dict(zip(("task", "shots", "exp", "seed"), cell), floor=floor, setting=setting, test=test))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "floors.jsonl", "".join(json_line(r) for r in rows))
    write_text(out / "floors.md", floors_markdown(rows))
    return rows


def floors_markdown(rows: list[dict]) -> str:
    """Per floor × task × shots: test mIoU, mDice, aAcc and ECE (×100) and HD95 (pixels), mean ± sample std over
    samplings and seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["floor"], r["task"], r["shots"]), []).append(r)
    columns = {"mIoU": 100, "mDice": 100, "aAcc": 100, "HD95": 1, "ECE": 100}
    lines = [
        "# Segmentation floors",
        "",
        "Test metrics of the floors on exactly the bench's splits (medpeft.seg_floors): mIoU, mDice, aAcc, ECE ×100, "
        "HD95 in pixels; mean ± sample std over samplings.",
        "",
        "| floor | task | shots | runs | " + " | ".join(columns) + " |",
        "|---|---|---:|---:|" + "---:|" * len(columns),
    ]
    for (floor, task, shots), group in groups.items():
        cells = []
        for name, scale in columns.items():
            values = [g["test"].get(name, np.nan) for g in group]
            cells.append(format_mean_std(*mean_std(values), ".1f", scale))
        lines.append(f"| {TITLES[floor]} | {task} | {shots} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
