"""Real segmentation sets that ship inside installed packages, written in the seg-folder layout.

:func:`materialise` reads the files from the package folders (found through the package metadata, never by
importing the package, whose imports need its heavy dependencies) and writes ``images/``, ``masks/``,
``classes.json``, the committed fixed ``test.txt`` and, where slices are grouped, ``cases.csv``. Nothing is
downloaded.

``icbm152-tissue`` (``pip install --no-deps nilearn`` and ``pip install nibabel``): the MNI ICBM152 2009a
non-linear symmetric T1 template shipped in nilearn (one average of 152 adult brains, 197 × 233 × 189 voxels of
1 mm), cut into axial slices.

- Classes from nilearn's grey- and white-matter probability maps (uint8, 0-255) on the same grid: 1 = grey matter
  where gm > 127, 2 = white matter where wm > 127 (white wins a tie; the two maps never both exceed 127), 0 =
  everything else (background, CSF, skull).
- Slices: the axial slices z whose grey + white pixels are > 5 % of the slice (z = 14 ... 146, 133 slices). Each is
  cropped to the 184 × 184 square x = 6-189, y = 25-208 (every non-zero voxel of the template lies inside), anterior
  up and the subject's left on the left (neurological view), grey uint8 PNG; stems ``z014`` ... ``z146``.
- **Test split** (``icbm152_tissue_test.txt``, committed): three blocks of 8 consecutive slices centred at 1/6,
  1/2 and 5/6 of the tissue range (z = 33-40, 77-84, 121-128; 24 slices). **The rule**: at least 10 slices lie
  between any test slice and any train or validation slice (|z_test - z_other| >= 11); the slices within 10 of a
  test block are not written at all. 49 slices remain for training and validation.
- ``cases.csv``: each test block is one case; the other slices form cases of 4 consecutive slices (each run of
  kept slices cut every 4), so that a K-shot draw spreads over the brain and validation slices are not all the
  training slices' neighbours.

``stardist-nuclei`` (``pip install --no-deps stardist`` and ``pip install tifffile``): stardist's ``img2d.tif``
(512 × 512 fluorescence image of nuclei, from the 2018 Data Science Bowl) and its instance mask ``mask2d.tif``
(125 nuclei); every instance id > 0 becomes foreground (1), 0 stays background.

- Tiles: non-overlapping 64 × 64 tiles on a 64-pixel grid, grey uint8 PNG (the image's values, 0-235, are kept as
  they are); stems ``y<row>x<col>`` in pixels (``y064x128``).
- **Test split** (``stardist_nuclei_test.txt``, committed): the 16 tiles of the right strip, x = 384-511.
  **The rule**: a 64-pixel strip (x = 320-383) between them and the 40 train/val tiles (x < 320) is not written;
  the largest nucleus spans 39 pixels, so no nucleus has pixels in both a test tile and a train/val tile.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

NAMES = ("icbm152-tissue", "stardist-nuclei")
HERE = Path(__file__).parent
TEST_LISTS = {"icbm152-tissue": HERE / "icbm152_tissue_test.txt", "stardist-nuclei": HERE / "stardist_nuclei_test.txt"}
FORMAT = 1  #: bumped when what is written changes, so that an older folder is written again

ICBM_FILES = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
ICBM_CLASSES = {"0": "background/CSF", "1": "grey matter", "2": "white matter"}
ICBM_TISSUE_FRACTION = 0.05
ICBM_GAP = 10  #: slices left out between test and train/val
ICBM_CASE_SLICES = 4
ICBM_CROP = (slice(6, 190), slice(25, 209))  #: x, y: 184 × 184 voxels around the head (t1 > 0: x 26-170, y 27-207)

STARDIST_FILES = "stardist/data/images/{}2d.tif"
STARDIST_CLASSES = {"0": "background", "1": "nucleus"}
TILE = 64
STARDIST_TRAIN_X = 320  #: train/val tiles lie left of this x; test tiles from x = 384 on
STARDIST_TEST_X = 384


def test_stems(name: str) -> list[str]:
    """The committed test split of a set."""
    text = TEST_LISTS[_known(name)].read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def default_dir(name: str) -> Path:
    """Where :func:`materialise` writes by default: ``$MEDPEFT_CACHE`` or ``$XDG_CACHE_HOME/medpeft`` (else
    ``~/.cache/medpeft``), then ``seg/<name>``."""
    base = (
        os.environ.get("MEDPEFT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "medpeft"
    )
    return Path(base) / "seg" / _known(name)


def materialise(name: str, out_dir=None) -> Path:
    """Write set ``name`` in the seg-folder layout into ``out_dir`` (default :func:`default_dir`) and return it.

    Idempotent: a folder whose marker says it is complete for this set and format is returned as it is. Files are
    written through temporary names and the marker last, so a concurrent reader never sees a half-written set.
    """
    out = Path(out_dir).expanduser() if out_dir is not None else default_dir(name)
    marker = out / ".medpeft-seg-real.json"
    expected = {"name": _known(name), "format": FORMAT}
    try:
        if json.loads(marker.read_text()) == expected:
            return out
    except (OSError, ValueError):
        pass
    images, masks, classes, cases = _icbm152() if name == "icbm152-tissue" else _stardist()
    test = test_stems(name)
    absent = sorted(set(test) - set(images))
    if absent:
        raise UserError(f"the installed package's data gives no {name} slice or tile {absent[0]} of the test split")
    try:
        for sub in ("images", "masks"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for stem in images:
            _write(out / "images" / f"{stem}.png", lambda p, s=stem: Image.fromarray(images[s]).save(p, "PNG"))
            _write(out / "masks" / f"{stem}.png", lambda p, s=stem: Image.fromarray(masks[s]).save(p, "PNG"))
        _write(out / "classes.json", lambda p: Path(p).write_text(json.dumps(classes, indent=1) + "\n"))
        _write(out / "test.txt", lambda p: Path(p).write_text("".join(f"{s}\n" for s in test)))
        if cases:
            _write(out / "cases.csv", lambda p: _write_cases(p, cases))
        _write(marker, lambda p: Path(p).write_text(json.dumps(expected) + "\n"))
    except OSError as err:
        raise UserError(f"cannot write the {name} set into {out}: {err.strerror or err}; pass another folder") from None
    return out


def _known(name: str) -> str:
    if name not in NAMES:
        raise UserError(f"unknown real segmentation set {name!r}; choose one of {', '.join(NAMES)}")
    return name


def _write(path: Path, writer) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_cases(path, cases: dict[str, str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stem", "case"])
        writer.writerows(cases.items())


def _package_file(dist: str, relative: str, install: str) -> Path:
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"this set is read from the {dist} package, which is not installed: {install}") from None
    if not path.is_file():
        raise UserError(f"the installed {dist} has no {relative}: reinstall it ({install})")
    return path


def _reader(module: str, install: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"reading this set needs {module}: {install}") from None


def _icbm152():
    """(images, masks, classes, cases) of the kept slices: stems ``zNNN`` -> 184 × 184 uint8 arrays."""
    nib = _reader("nibabel", "pip install nibabel")
    install = "pip install --no-deps nilearn"
    t1, gm, wm = (
        np.asarray(nib.load(_package_file("nilearn", ICBM_FILES.format(k), install)).dataobj, np.uint8)
        for k in ("t1", "gm", "wm")
    )
    labels = np.zeros(t1.shape, np.uint8)
    labels[gm > 127] = 1
    labels[(wm > 127) & (wm >= gm)] = 2
    tissue = np.flatnonzero((labels > 0).mean(axis=(0, 1)) > ICBM_TISSUE_FRACTION)
    test_z = np.array([int(s[1:]) for s in test_stems("icbm152-tissue")])
    kept = [z for z in tissue if z in test_z or np.abs(test_z - z).min() > ICBM_GAP]
    view = lambda a: np.ascontiguousarray(a[ICBM_CROP].T[::-1])  # noqa: E731  (x, y) voxels -> rows anterior first
    images = {f"z{z:03d}": view(t1[:, :, z]) for z in kept}
    masks = {f"z{z:03d}": view(labels[:, :, z]) for z in kept}
    cases = {}
    for group in (test_z, [z for z in kept if z not in test_z]):
        for run in np.split(np.asarray(group), np.flatnonzero(np.diff(group) > 1) + 1):
            size = len(run) if group is test_z else ICBM_CASE_SLICES  # a test block is one case
            for chunk in (run[i : i + size] for i in range(0, len(run), size)):
                cases.update({f"z{z:03d}": f"z{chunk[0]:03d}-z{chunk[-1]:03d}" for z in chunk})
    return images, masks, ICBM_CLASSES, dict(sorted(cases.items()))


def _stardist():
    """(images, masks, classes, no cases) of the tiles outside the gap strip: stems ``yYYYxXXX``."""
    tifffile = _reader("tifffile", "pip install tifffile")
    install = "pip install --no-deps stardist"
    image = tifffile.imread(_package_file("stardist", STARDIST_FILES.format("img"), install))
    instances = tifffile.imread(_package_file("stardist", STARDIST_FILES.format("mask"), install))
    if image.shape != instances.shape or image.max() > 255:
        raise UserError(f"the installed stardist's img2d.tif is not the expected 8-bit-valued image: {install}")
    image, mask = image.astype(np.uint8), (instances > 0).astype(np.uint8)
    images, masks = {}, {}
    for y in range(0, image.shape[0] - TILE + 1, TILE):
        for x in range(0, image.shape[1] - TILE + 1, TILE):
            if x + TILE <= STARDIST_TRAIN_X or x >= STARDIST_TEST_X:
                stem = f"y{y:03d}x{x:03d}"
                images[stem] = np.ascontiguousarray(image[y : y + TILE, x : x + TILE])
                masks[stem] = np.ascontiguousarray(mask[y : y + TILE, x : x + TILE])
    return images, masks, STARDIST_CLASSES, {}
