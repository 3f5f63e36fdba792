"""Segmentation data: images with integer label masks, their class map, and seeded few-shot samplings.

Layouts (each gives :class:`~medpeft.data.DatasetSplits` whose :class:`~medpeft.data.Samples` carry ``masks``):

- ``seg-folder``: ``ROOT/images/<stem>.<png|jpg|jpeg|tif|tiff|bmp>`` and ``ROOT/masks/<stem>.png`` (or .tif/.tiff/
  .bmp), with optional ``classes.json`` (``{"<mask value>": "<class name>"}``; class index = position in the sorted
  values), ``test.txt`` / ``val.txt`` (stems of a fixed test split / validation pool) and ``cases.csv`` (``stem,
  case``: every case stays in one split).
- ``kvasir-seg``: Kvasir-SEG's ``images/`` and ``masks/`` (JPEG masks, thresholded at 128 to 0/255); the test split
  is a list file of stems (``--test-list``, or ``ROOT/test.txt``), else a seeded 880/120 split (120 test images
  drawn with the run's seed, recorded in the run's ``split``).
- ``isic2018-seg``: ISIC 2018 Task 1, ``ISIC_<id>.jpg`` with ``ISIC_<id>_segmentation.png`` anywhere under ROOT;
  files under a folder whose name holds ``Validation`` or ``Test`` form those splits.
- ``seg-csv``: a CSV with columns ``image,mask`` and optionally ``split`` (train/val/test) and ``case``; paths
  relative to the CSV's folder; ``classes.json`` beside it.

Without ``classes.json`` the masks must be binary: values {0, 255} or {0, 1} (``background``, ``foreground``).
Every mask is checked when the data is loaded: a missing mask, a mask whose size differs from its image's, or a
value outside the class map is a one-line :class:`~medpeft.errors.UserError` naming the file.

Samplings (K shots, experiment e, seed s): the test split is the fixed list, or a fraction of the cases drawn with
seed s (the same for every experiment); validation is the fixed pool, or up to :data:`VAL_IMAGES` images of cases
outside train and test; train is K images from K distinct cases when there are that many (one image per case,
drawn with seed (s, e)), else round-robin over the cases. Val, train and test never share a case.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ParameterError, UserError
from .samples import DatasetSplits, Samples
from .splits import parse_shots
from .tasks import TaskSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
LOSSY = (".jpg", ".jpeg")
VAL_IMAGES = 20  #: validation images drawn when there is no fixed validation pool
TEST_FRACTION = 0.2  #: cases drawn for test when there is no fixed test list (seg-folder, seg-csv)
BINARY = {(0, 255): ("background", "foreground"), (0, 1): ("background", "foreground")}


@dataclass
class Pair:
    """One labelled image: its stem (name), image file, mask file (or arrays) and case."""

    stem: str
    image: object
    mask: object
    case: str

    def name_mask(self) -> str:
        """How errors name the mask: its file, or the slice it is."""
        return f"label slice {self.stem}" if isinstance(self.mask, np.ndarray) else f"mask {self.mask}"


def read_raw_mask(source) -> np.ndarray:
    """The (H, W) integer values of a mask file or array. A JPEG mask (lossy, as Kvasir-SEG ships) is thresholded
    at 128 to 0/255; a colour mask must have equal channels."""
    if isinstance(source, np.ndarray):
        return source
    try:
        with Image.open(source) as img:
            values = np.asarray(img)
    except (OSError, ValueError) as err:
        raise UserError(f"mask {source} cannot be read ({err})") from None
    if values.ndim == 3:
        if not (values[..., :3] == values[..., :1]).all():
            raise UserError(f"mask {source} is a colour image: masks hold one integer label value per pixel")
        values = values[..., 0]
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if Path(source).suffix.lower() in LOSSY:
        values = np.where(values >= 128, 255, 0).astype(np.uint8)
    return values


def describe(source) -> str:
    """How errors name a mask: its file, or an array."""
    return "a mask array" if isinstance(source, np.ndarray) else f"mask {source}"


def to_indices(raw: np.ndarray, values: tuple[int, ...], where: str = "a mask") -> np.ndarray:
    """Mask values → class indices (uint8: position in ``values``); a value outside them is a one-line error naming
    ``where``."""
    table = np.asarray(values)
    index = np.clip(np.searchsorted(table, raw), 0, len(table) - 1)
    bad = table[index] != raw
    if bad.any():
        raise UserError(
            f"{where} holds value {raw[bad].flat[0]}, outside the class map {list(values)}: fix the mask or add "
            "the value to classes.json"
        )
    return index.astype(np.uint8)


def read_mask(source, task: TaskSpec) -> np.ndarray:
    """The (H, W) class-index mask of a mask file or array of raw values."""
    return to_indices(read_raw_mask(source), task.values, describe(source))


def _image_size(source) -> tuple[int, int]:
    if isinstance(source, np.ndarray):
        return source.shape[:2]
    try:
        with Image.open(source) as img:
            return img.size[::-1]
    except (OSError, ValueError) as err:
        raise UserError(f"image {source} cannot be read ({err})") from None


def class_map(root: Path, pairs: list[Pair]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(values, names) from ``root/classes.json``, or for binary masks without it {0, 255} or {0, 1}."""
    path = root / "classes.json"
    if path.is_file():
        try:
            mapping = json.loads(path.read_text())
            values = sorted((int(v), str(n)) for v, n in mapping.items())
        except (ValueError, AttributeError, TypeError) as err:
            raise UserError(f'{path}: expected {{"<mask value>": "<class name>", ...}} ({err})') from None
        if len(values) < 2:
            raise UserError(f"{path}: a segmentation needs at least two classes (background included)")
        return tuple(v for v, _ in values), tuple(n for _, n in values)
    found = [(pair.name_mask(), set(np.unique(read_raw_mask(pair.mask)).tolist())) for pair in pairs]
    seen = set().union(*(v for _, v in found))
    values = (0, 1) if seen <= {0, 1} else (0, 255)
    for mask, held in found:
        if not held <= set(values):
            raise UserError(
                f"{mask} holds value {min(held - set(values))}, outside the binary class map {list(values)}: "
                f"without {path} masks must be 0/255 or 0/1; write it mapping each mask value to a class name"
            )
    return values, BINARY[values]


def check_pairs(pairs: list[Pair], values: tuple[int, ...]) -> None:
    """Every mask exists, has its image's size and holds class-map values only (one-line errors naming the file)."""
    if not pairs:
        raise UserError("no labelled images found")
    for pair in pairs:
        if not isinstance(pair.mask, np.ndarray) and not Path(pair.mask).is_file():
            raise UserError(f"mask {pair.mask} of image {pair.image} is missing")
        raw = read_raw_mask(pair.mask)
        size = _image_size(pair.image)
        if raw.shape != tuple(size):
            raise UserError(
                f"{pair.name_mask()} is {raw.shape[1]}x{raw.shape[0]} but its image"
                f"{'' if isinstance(pair.image, np.ndarray) else ' ' + str(pair.image)} is {size[1]}x{size[0]} "
                "(width x height): masks must have their image's size"
            )
        to_indices(raw, values, pair.name_mask())


def _read_stems(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"cannot read list file {path} ({err})") from None
    names = [line.split()[0] for line in lines if line.strip()]
    return [Path(n).stem if Path(n).suffix.lower() in IMAGE_SUFFIXES else n for n in names]


def _cases(root: Path) -> dict[str, str]:
    path = root / "cases.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"stem", "case"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected the columns stem,case")
        return {row["stem"]: row["case"] for row in reader}


def _known(stems: list[str], by_stem: dict[str, Pair], list_file) -> list[str]:
    unknown = [s for s in stems if s not in by_stem]
    if unknown:
        raise UserError(f"{list_file} names {len(unknown)} image(s) with no image and mask, e.g. {unknown[0]!r}")
    return stems


def sample_splits(
    task: TaskSpec,
    pairs: list[Pair],
    shots,
    exp: int,
    seed: int,
    *,
    test: list[str] | None = None,
    val: list[str] | None = None,
    test_count: int | None = None,
) -> DatasetSplits:
    """The seeded K-shot sampling of the module docstring. ``test``/``val``: fixed stems; ``test_count``: draw that
    many test images (whole cases) with ``seed`` when there is no fixed test list (default: a fraction of the
    cases)."""
    by_stem = {p.stem: p for p in pairs}
    case_of = {p.stem: p.case for p in pairs}
    if test is None:
        fixed_val = {case_of[s] for s in val or []}
        test = _draw_test([p for p in pairs if p.case not in fixed_val], np.random.default_rng([seed, 7]), test_count)
    taken = {case_of[s] for s in test}
    pool = [p for p in pairs if p.case not in taken and p.stem not in set(val or [])]
    if val is not None:
        clash = {case_of[s] for s in val} & taken
        if clash:
            raise UserError(f"the fixed val and test lists share case(s) {sorted(clash)[:3]}: a case is in one split")
        pool = [p for p in pool if p.case not in {case_of[s] for s in val}]
    rng = np.random.default_rng([seed, exp])
    k = parse_shots(shots)
    k = max(1, round(k * len(pool))) if isinstance(k, float) else k
    train = _draw_train(pool, k, rng)
    if val is None:
        used = {case_of[s] for s in train}
        rest = [p for p in pool if p.case not in used]
        val = _whole_cases(rest, rng, VAL_IMAGES)
    if not train or not val:
        raise UserError(
            f"dataset {task.name!r}: {len(pairs)} labelled images leave no {'train' if not train else 'val'} images "
            f"beside {len(test)} test images: add images or cases"
        )

    def samples(stems):
        chosen = [by_stem[s] for s in stems]
        return Samples([p.stem for p in chosen], [p.image for p in chosen], masks=[p.mask for p in chosen])

    return DatasetSplits(task, samples(train), samples(val), samples(test) if test else None)


def _by_case(pairs: list[Pair]) -> dict[str, list[str]]:
    cases: dict[str, list[str]] = {}
    for p in sorted(pairs, key=lambda p: p.stem):
        cases.setdefault(p.case, []).append(p.stem)
    return cases


def _whole_cases(pairs: list[Pair], rng, count: int) -> list[str]:
    """Up to ``count`` stems (whole cases, in a random order; the last case cut at ``count``)."""
    cases = _by_case(pairs)
    out: list[str] = []
    for case in rng.permutation(sorted(cases)):
        out += list(rng.permutation(cases[case]))[: count - len(out)]
        if len(out) >= count:
            break
    return out


def _draw_test(pairs: list[Pair], rng, count: int | None) -> list[str]:
    cases = _by_case(pairs)
    if count is None:
        n_cases = max(1, round(TEST_FRACTION * len(cases))) if len(cases) > 2 else 0
        return sorted(s for c in rng.permutation(sorted(cases))[:n_cases] for s in cases[c])
    out: list[str] = []
    for case in rng.permutation(sorted(cases)):  # whole cases until count images
        if len(out) >= count:
            break
        out += cases[case]
    return sorted(out)


def _draw_train(pairs: list[Pair], k: int, rng) -> list[str]:
    """K images, one per case from K cases when there are that many, else round-robin over the cases."""
    cases = {c: list(rng.permutation(stems)) for c, stems in _by_case(pairs).items()}
    order = list(rng.permutation(sorted(cases)))
    out: list[str] = []
    while len(out) < k and any(cases.values()):
        for case in order:
            if cases[case] and len(out) < k:
                out.append(cases[case].pop(0))
    return out


def _stem_files(folder: Path, suffixes) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"folder {folder} not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def _folder_pairs(root: Path, mask_suffixes=MASK_SUFFIXES) -> list[Pair]:
    images = _stem_files(root / "images", IMAGE_SUFFIXES)
    masks = _stem_files(root / "masks", mask_suffixes)
    if not images:
        raise UserError(f"{root / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    cases = _cases(root)
    pairs = []
    for stem, image in images.items():
        mask = masks.get(stem)
        if mask is None:
            raise UserError(f"image {image} has no mask: expected {root / 'masks' / stem}.png")
        pairs.append(Pair(stem, str(image), str(mask), cases.get(stem, stem)))
    return pairs


def _task(name: str, values, classes) -> TaskSpec:
    return TaskSpec(name, tuple(classes), False, kind="segmentation", values=tuple(values))


def _fixed(root: Path, name: str, given: str | None = None) -> Path | None:
    if given is not None:
        return Path(given)
    path = root / name
    return path if path.is_file() else None


def load_seg_folder(root, shots, exp: int = 1, seed: int = 0, test_list: str | None = None) -> DatasetSplits:
    """The ``seg-folder`` layout (module docstring)."""
    root = Path(root)
    pairs = _folder_pairs(root)
    return _load(root.name, root, pairs, shots, exp, seed, _fixed(root, "test.txt", test_list))


def load_kvasir(root, shots, exp: int = 1, seed: int = 0, test_list: str | None = None) -> DatasetSplits:
    """Kvasir-SEG (module docstring): 120 test images drawn with the seed unless a test list is given."""
    root = Path(root)
    pairs = _folder_pairs(root, MASK_SUFFIXES + LOSSY)
    return _load("kvasir-seg", root, pairs, shots, exp, seed, _fixed(root, "test.txt", test_list), test_count=120)


def load_isic2018(root, shots, exp: int = 1, seed: int = 0, test_list: str | None = None) -> DatasetSplits:
    """ISIC 2018 Task 1 (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ISIC 2018 folder {root} not found")
    masks = {p.name.removesuffix("_segmentation.png"): p for p in root.rglob("ISIC_*_segmentation.png")}
    pairs, split = [], {}
    for image in sorted(root.rglob("ISIC_*.jpg")):
        mask = masks.get(image.stem)
        if mask is None:
            raise UserError(f"image {image} has no mask {image.stem}_segmentation.png under {root}")
        pairs.append(Pair(image.stem, str(image), str(mask), image.stem))
        parts = " ".join(image.parent.parts[len(root.parts) :]).lower()
        split[image.stem] = "test" if "test" in parts else "val" if "validation" in parts else "train"
    if not pairs:
        raise UserError(f"{root} holds no ISIC_*.jpg images")
    test = [s for s, v in split.items() if v == "test"] or None
    val = [s for s, v in split.items() if v == "val"] or None
    return _load("isic2018-seg", root, pairs, shots, exp, seed, _fixed(root, "test.txt", test_list), test, val)


def load_seg_csv(path, shots, exp: int = 1, seed: int = 0, test_list: str | None = None) -> DatasetSplits:
    """``seg-csv`` (module docstring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            rows = list(reader)
            header = reader.fieldnames or []
    except OSError as err:
        raise UserError(f"cannot read CSV file {path} ({err})") from None
    if not {"image", "mask"} <= set(header):
        raise UserError(f"{path}, line 1: expected the columns image,mask (and optionally split, case), got {header}")
    pairs, split = [], {}
    for n, row in enumerate(rows, start=2):
        if not row.get("image") or not row.get("mask"):
            raise UserError(f"{path}, line {n}: expected an image and a mask path")
        stem = row["image"]
        split[stem] = (row.get("split") or "train").strip().lower()
        if split[stem] not in ("train", "val", "test"):
            raise UserError(f"{path}, line {n}: split {split[stem]!r} is not train, val or test")
        pairs.append(
            Pair(stem, str(path.parent / row["image"]), str(path.parent / row["mask"]), row.get("case") or stem)
        )
    test = [s for s, v in split.items() if v == "test"] or None
    val = [s for s, v in split.items() if v == "val"] or None
    return _load(path.stem, path.parent, pairs, shots, exp, seed, Path(test_list) if test_list else None, test, val)


def _load(name, root, pairs, shots, exp, seed, test_file, test=None, val=None, test_count=None) -> DatasetSplits:
    by_stem = {p.stem: p for p in pairs}
    if test_file is not None and test_file.is_file():
        test = _known(_read_stems(test_file), by_stem, test_file)
    val_file = root / "val.txt"
    if val is None and val_file.is_file():
        val = _known(_read_stems(val_file), by_stem, val_file)
    values, classes = class_map(root, pairs)
    check_pairs(pairs, values)
    return sample_splits(
        _task(name, values, classes), pairs, shots, exp, seed, test=test, val=val, test_count=test_count
    )


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mnc", ".img")


def volume_stem(path: Path) -> str | None:
    """The case name of a volume file (its name without a :data:`VOLUME_SUFFIXES` suffix); None: not a volume."""
    name = path.name.lower()
    suffix = next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)
    return None if suffix is None else path.name[: -len(suffix)]


def read_volume(path) -> np.ndarray:
    """A 3-D volume as an array on its voxel axes (i, j, k): NIfTI through nibabel (its array order), every other
    ITK format through SimpleITK (whose (k, j, i) array is transposed to match)."""
    path = Path(path)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel

            volume = np.asanyarray(nibabel.load(str(path)).dataobj)
        else:
            import SimpleITK as sitk

            volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose()
    except ImportError:
        raise UserError(f"reading {path} needs nibabel / SimpleITK: pip install 'medpeft[seg]'") from None
    except Exception as err:  # the readers' errors have no common type
        raise UserError(f"volume {path} cannot be read ({str(err).strip().splitlines()[0]})") from None
    volume = np.squeeze(volume)
    if volume.ndim != 3:
        raise UserError(f"volume {path} has {volume.ndim} dimensions after dropping unit ones; expected 3")
    return volume


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Intensities stretched linearly from the volume's 0.5th-99.5th percentiles to 0..255 (clipped)."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    scaled = (volume.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def volume_pairs(root: Path, axis: int) -> list[Pair]:
    """Slices of ``root/images/<case>.<ext>`` with ``root/labels/<case>.<ext>`` (or ``masks/``) along voxel axis
    ``axis``; only labelled slices (some label value other than the smallest, background); case = file stem."""
    if axis not in (0, 1, 2):
        raise ParameterError("axis", "{axis} {value}: a volume is sliced along voxel axis 0, 1 or 2", value=axis)
    folder = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), root / "labels")
    images = {volume_stem(p): p for p in sorted((root / "images").glob("*")) if volume_stem(p)}
    labels = {volume_stem(p): p for p in sorted(folder.glob("*")) if volume_stem(p)} if folder.is_dir() else {}
    if not images:
        raise UserError(f"{root / 'images'} holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
    pairs = []
    for case, image_path in images.items():
        if case not in labels:
            raise UserError(f"volume {image_path} has no label volume {folder / case}.<ext>")
        image, label = read_volume(image_path), read_volume(labels[case])
        if image.shape != label.shape:
            raise UserError(f"label volume {labels[case]} is {label.shape} but its image {image_path} is {image.shape}")
        label = label.astype(np.int64)
        image = to_uint8(image)
        background = label.min()
        for i in range(image.shape[axis]):
            mask = np.take(label, i, axis=axis)
            if (mask != background).any():
                pairs.append(Pair(f"{case}/{axis}-{i:04d}", np.take(image, i, axis=axis), mask, case))
    return pairs


def load_seg_volumes(
    root, shots, exp: int = 1, seed: int = 0, test_list: str | None = None, axis: int = 2
) -> DatasetSplits:
    """``seg-volumes``: image and label volumes (NIfTI, NRRD, MHA, ...) sliced along ``axis`` (:func:`volume_pairs`);
    ``classes.json`` maps label values to names (else binary 0/1 or 0/255); ``test.txt`` / ``--test-list`` name test
    cases; K shots are K labelled slices from K distinct cases when there are that many."""
    root = Path(root)
    pairs = volume_pairs(root, axis)
    test_file = _fixed(root, "test.txt", test_list)
    test = None
    if test_file is not None:
        cases = set(_read_stems(test_file))
        test = [p.stem for p in pairs if p.case in cases]
        if not test:
            raise UserError(f"{test_file} names no case with labelled slices under {root / 'images'}")
    values, classes = class_map(root, pairs)
    check_pairs(pairs, values)
    return sample_splits(_task(root.name, values, classes), pairs, shots, exp, seed, test=test)
