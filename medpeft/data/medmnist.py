"""MedMNIST datasets from their ``.npz`` files (keys ``{train,val,test}_{images,labels}``)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .samples import DatasetSplits, Samples
from .splits import few_shot_split
from .tasks import TaskSpec

_PARTS = ("train", "val", "test")
_NAME = re.compile(r"(?P<flag>[a-z0-9]+?)(?:_(?P<size>\d+))?")


def _medmnist_info(flag: str) -> dict | None:
    try:
        import medmnist
    except ImportError:
        return None
    return medmnist.INFO.get(flag)


def _download(name: str, root: Path) -> Path:
    """``<root>/<name>.npz``, downloaded with the ``medmnist`` package when absent."""
    path = root / f"{name}.npz"
    if path.is_file():
        return path
    try:
        import medmnist
    except ImportError:
        raise UserError(
            f"{path} not found and the medmnist package is not installed; pass the path of a MedMNIST "
            ".npz file (or pip install medmnist)"
        ) from None
    m = _NAME.fullmatch(name)
    if not m or m["flag"] not in medmnist.INFO:
        raise UserError(
            f"unknown MedMNIST dataset {name!r}; expected one of: {', '.join(medmnist.INFO)} "
            "(optionally with a _<size> suffix, e.g. pneumoniamnist_224)"
        )
    size = {"size": int(m["size"])} if m["size"] else {}
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset_class = getattr(medmnist, medmnist.INFO[m["flag"]]["python_class"])
        dataset_class(split="train", download=True, root=str(root), **size)
    except Exception as e:  # network and server errors of a third-party downloader
        raise UserError(f"downloading MedMNIST {name!r} into {root} failed ({e}); pass the .npz path instead") from e
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    keys = [f"{part}_{kind}" for part in _PARTS for kind in ("images", "labels")]
    try:
        npz = np.load(path)
        with npz:
            arrays = {k: npz[k] for k in keys if k in npz.files}
    except (OSError, ValueError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a plain .npy
        raise UserError(f"cannot read {path} as a .npz file: {e}") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; expected the MedMNIST keys {', '.join(keys)}")
    return arrays


def load_medmnist(
    path_or_name: str | Path, shots: int, exp: int, seed: int = 0, root: str | Path | None = None
) -> DatasetSplits:
    """K-shot MedMNIST: train = K images per class of the train set (seeded by ``(seed, exp)``; positives per class
    for multi-label sets such as chestmnist), val and test = the official sets. Sources are the uint8 arrays.

    ``path_or_name``: a ``.npz`` file, or a name (``pneumoniamnist``, ``pneumoniamnist_224``) looked up in ``root``
    (default ``~/.medmnist``) and downloaded there with the ``medmnist`` package when absent.
    """
    path = Path(path_or_name).expanduser()
    if path.suffix == ".npz" or path.parent != Path("."):
        if not path.is_file():
            raise UserError(f"MedMNIST file {path} not found")
    else:
        path = _download(str(path_or_name).lower(), Path(root) if root else Path.home() / ".medmnist")
    data = _read_npz(path)
    flag = _NAME.fullmatch(path.stem.lower())
    info = _medmnist_info(flag["flag"]) if flag else None
    multilabel = data["train_labels"].ndim == 2 and data["train_labels"].shape[1] > 1
    if info:
        classes = tuple(info["label"][k] for k in sorted(info["label"], key=int))
    else:
        count = data["train_labels"].shape[1] if multilabel else int(max(data[f"{p}_labels"].max() for p in _PARTS)) + 1
        classes = tuple(str(c) for c in range(count))
    task = TaskSpec(flag["flag"] if flag else path.stem, classes, multilabel)

    def part(name: str) -> Samples:
        labels = data[f"{name}_labels"]
        labels = labels.astype(np.uint8) if multilabel else labels.reshape(len(labels)).astype(np.int64)
        return Samples([f"{name}_{i}" for i in range(len(labels))], list(data[f"{name}_images"]), labels)

    train = part("train")
    train_idx, _ = few_shot_split(train.labels, shots, (seed, exp))
    return DatasetSplits(task, train.subset(train_idx), part("val"), part("test"))
