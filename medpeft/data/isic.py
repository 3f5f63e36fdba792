"""ISIC 2018 Task 3 (7 skin-lesion classes), as distributed by the challenge.

Files are found by name anywhere under ``root``, so different unpackings work::

    ISIC2018_Task3_Training_Input/<image>.jpg
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv   (image,MEL,NV,...,VASC one-hot)
    ... and the same for Validation (193 images) and Test (1512 images)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import UserError
from .samples import DatasetSplits, Samples
from .splits import few_shot_split
from .tasks import TASKS

ISIC = TASKS["isic"]
VAL_PER_CLASS = 30
"""Val images per class drawn from the training set when the official test ground truth is absent."""


def read_isic_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(image ids, class indices)`` of a ground-truth CSV; each row must be exactly one-hot."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise UserError(f"cannot read ISIC ground truth {path}: {e.strerror or e}") from e
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in ("image", *ISIC.classes) if c not in header]
    if missing:
        raise UserError(f"{path}, line 1: expected header image,{','.join(ISIC.classes)}; missing {missing}")
    columns = [header.index(c) for c in ISIC.classes]
    names, labels = [], []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            values = np.array([float(row[i]) for i in columns])
        except (ValueError, IndexError):
            values = None
        if values is None or not np.isin(values, (0.0, 1.0)).all() or values.sum() != 1:
            raise UserError(
                f"{path}, line {n}: expected an image id and a one-hot row over "
                f"{','.join(ISIC.classes)}, got {','.join(row)[:80]!r}"
            )
        names.append(row[header.index("image")].strip())
        labels.append(int(values.argmax()))
    return names, np.array(labels, dtype=np.int64)


def _visible(paths) -> list[Path]:
    return sorted(p for p in paths if not p.name.startswith(".") and "__MACOSX" not in p.parts)


def _official(root: Path, split: str) -> Samples | None:
    """The official ``split`` (Training, Validation, Test), or None when its ground truth is absent."""
    csvs = _visible(root.rglob(f"*{split}_GroundTruth*.csv"))
    if not csvs:
        return None
    inputs = _visible(p for p in root.rglob(f"*{split}_Input*") if p.is_dir())
    if not inputs:
        raise UserError(f"found {csvs[0]} but no ISIC2018_Task3_{split}_Input folder of images under {root}")
    names, labels = read_isic_csv(csvs[0])
    return Samples(names, [str(inputs[0] / f"{n}.jpg") for n in names], labels)


def load_isic(
    root: str | Path, shots: int, exp: int, seed: int = 0, val_per_class: int = VAL_PER_CLASS
) -> DatasetSplits:
    """K-shot ISIC 2018: train = K images per class of the training set (seeded by ``(seed, exp)``; a larger K
    contains the smaller ones), val = the official validation set, test = the official test set.

    Without the test ground truth, the official validation set becomes the test set and val is ``val_per_class``
    images per class drawn from the training set, disjoint from train.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ISIC folder {root} not found")
    pool = _official(root, "Training")
    if pool is None:
        raise UserError(f"no ISIC2018_Task3_Training_GroundTruth.csv under {root}")
    val, test = _official(root, "Validation"), _official(root, "Test")
    train_idx, drawn_val = few_shot_split(pool.labels, shots, (seed, exp), val_per_class)
    if test is None:
        test, val = val, None
    return DatasetSplits(ISIC, pool.subset(train_idx), val if val is not None else pool.subset(drawn_val), test)
