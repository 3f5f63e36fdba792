"""Your own data: a CSV of image paths and labels, or a folder per class.

Both give :class:`DatasetSplits`. The official split comes from a ``split`` column (``train``/``val``/``test``)
or ``train/``, ``val/``, ``test/`` folders; without one, everything is the training pool. With ``shots``, train is
K images per class of the training pool (seeded by ``(seed, exp)``); when there is no val split, val is
``val_per_class`` further images per class of the pool; when there is no test split, test is the rest of the pool.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import UserError
from .images import is_image_file
from .samples import DatasetSplits, Samples
from .splits import few_shot_split
from .tasks import TaskSpec

VAL_PER_CLASS = 20
SPLITS = ("train", "val", "test")


def _assemble(task: TaskSpec, parts: dict[str, Samples], shots, exp, seed, val_per_class) -> DatasetSplits:
    pool = parts.get("train")
    if pool is None or not len(pool):
        raise UserError(f"dataset {task.name!r} has no training images")
    if shots is None:
        if "val" not in parts:
            raise UserError(f"dataset {task.name!r} has no val split; add one, or pass shots to draw val from train")
        return DatasetSplits(task, pool, parts["val"], parts.get("test"))
    train_idx, val_idx = few_shot_split(pool.labels, shots, (seed, exp), val_per_class)
    val = parts.get("val")
    used = train_idx if val is not None else np.concatenate([train_idx, val_idx])
    test = parts.get("test")
    if test is None:
        rest = np.setdiff1d(np.arange(len(pool)), used)
        test = pool.subset(rest) if len(rest) else None
    return DatasetSplits(task, pool.subset(train_idx), val if val is not None else pool.subset(val_idx), test)


def _csv_labels(path, header, rows, multilabel) -> tuple[tuple[str, ...], np.ndarray, bool]:
    """``(classes, labels, multilabel)`` from a ``label`` column or from one 0/1 column per class."""
    if "label" in header:
        values = [row["label"] for _, row in rows]
        for n, row in rows:
            if not row["label"]:
                raise UserError(f"{path}, line {n}: expected a label (class name or index), got an empty field")
        if all(v.isdigit() for v in values):
            indices = np.array([int(v) for v in values], dtype=np.int64)
            return tuple(str(c) for c in range(indices.max() + 1)), indices, False
        classes = tuple(sorted(set(values)))
        return classes, np.array([classes.index(v) for v in values], dtype=np.int64), False
    classes = tuple(h for h in header if h not in ("image", "split"))
    if not classes:
        raise UserError(f"{path}, line 1: expected a 'label' column or one 0/1 column per class, got {header}")
    matrix = []
    for n, row in rows:
        values = [row[c] for c in classes]
        if any(v not in ("0", "1") for v in values):
            raise UserError(f"{path}, line {n}: expected 0 or 1 in the class columns {','.join(classes)}, got {values}")
        matrix.append([int(v) for v in values])
    matrix = np.array(matrix, dtype=np.uint8).reshape(len(rows), len(classes))
    if multilabel is None:
        multilabel = bool((matrix.sum(1) != 1).any())
    elif not multilabel and (matrix.sum(1) != 1).any():
        raise UserError(f"{path}: multilabel=False but some rows have no or several 1s in {','.join(classes)}")
    return classes, (matrix if multilabel else matrix.argmax(1).astype(np.int64)), multilabel


def load_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    shots: int | None = None,
    exp: int = 1,
    seed: int = 0,
    val_per_class: int | None = VAL_PER_CLASS,
    multilabel: bool | None = None,
) -> DatasetSplits:
    """A dataset described by a CSV with a header.

    Columns: ``image`` (a path relative to ``image_root``, default the CSV's folder), then either ``label`` (class
    name or index: single-label) or one 0/1 column per class (multi-label if some row has several or no 1s, unless
    ``multilabel`` says otherwise), and optionally ``split``.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except FileNotFoundError:
        raise UserError(f"CSV file {path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read CSV file {path}: {e}") from e
    if "image" not in header:
        raise UserError(f"{path}, line 1: expected an 'image' column in the header, got {header}")
    rows = [(n, row) for n, row in rows if any(row.values())]
    for n, row in rows:
        if not row.get("image") or row.get("split", "train").lower() not in SPLITS:
            raise UserError(f"{path}, line {n}: expected an image path and a split in {SPLITS}, got {row}")
    classes, labels, multilabel = _csv_labels(path, header, rows, multilabel)
    base = Path(image_root) if image_root is not None else path.parent
    split = np.array([row.get("split", "train").lower() for _, row in rows])
    names = [row["image"] for _, row in rows]
    everything = Samples(names, [str(base / name) for name in names], labels)
    parts = {s: everything.subset(np.flatnonzero(split == s)) for s in SPLITS if (split == s).any()}
    return _assemble(TaskSpec(path.stem, classes, multilabel), parts, shots, exp, seed, val_per_class)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p))


def load_folder(
    root: str | Path,
    shots: int | None = None,
    exp: int = 1,
    seed: int = 0,
    val_per_class: int | None = VAL_PER_CLASS,
) -> DatasetSplits:
    """A single-label dataset laid out as ``root/<split>/<class>/*`` or ``root/<class>/*``.

    Classes are the (sorted) class folders of the training split; images are the files :func:`is_image_file`
    takes (an image suffix, or DICOM under any name); names are paths relative to ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} not found")
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLITS}
    if folders and "train" not in folders:
        raise UserError(f"{root} has {', '.join(sorted(folders))} folders but no train/ folder")
    folders = folders or {"train": root}
    classes = tuple(sorted(p.name for p in folders["train"].iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise UserError(f"{folders['train']} has no class folders; expected <class>/<image> inside")
    parts = {}
    for split, folder in folders.items():
        files, labels = [], []
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if d.name not in classes:
                raise UserError(f"class folder {d} is not among the training classes {', '.join(classes)}")
            found = _images(d)
            files += found
            labels += [classes.index(d.name)] * len(found)
        names = [f.relative_to(root).as_posix() for f in files]
        parts[split] = Samples(names, [str(f) for f in files], np.array(labels, dtype=np.int64))
    return _assemble(TaskSpec(root.name, classes, False), parts, shots, exp, seed, val_per_class)
