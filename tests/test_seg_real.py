"""The real segmentation sets from installed packages: classes, the stated split rules, idempotence."""

import csv
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpeft.data import seg_real
from medpeft.errors import UserError


def _package_dir(dist, reader):
    pytest.importorskip(reader)
    try:
        return Path(importlib.metadata.distribution(dist).locate_file(dist))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed")


def _read(root, sub, stem):
    return np.array(Image.open(root / sub / f"{stem}.png"))


def _stems(root):
    return sorted(p.stem for p in (root / "images").iterdir())


@pytest.fixture(scope="module")
def icbm(tmp_path_factory):
    package = _package_dir("nilearn", "nibabel")
    return seg_real.materialise("icbm152-tissue", tmp_path_factory.mktemp("icbm")), package


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    package = _package_dir("stardist", "tifffile")
    return seg_real.materialise("stardist-nuclei", tmp_path_factory.mktemp("nuclei")), package


def test_icbm_masks_slices_and_gap_rule(icbm):
    import nibabel

    root, package = icbm
    vol = {
        k: np.asarray(
            nibabel.load(package / f"datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz").dataobj
        )
        for k in ("t1", "gm", "wm")
    }
    truth = np.select([vol["wm"] > 127, vol["gm"] > 127], [2, 1], 0)  # white first: white wins a tie
    tissue_z = [z for z in range(truth.shape[2]) if np.count_nonzero(truth[:, :, z]) > 0.05 * truth[:, :, z].size]
    test = [int(s[1:]) for s in (root / "test.txt").read_text().split()]
    assert (root / "test.txt").read_text().split() == seg_real.test_stems("icbm152-tissue") and len(test) == 24
    written = [int(s[1:]) for s in _stems(root)]
    others = sorted(set(written) - set(test))
    assert set(test) <= set(tissue_z) and len(others) == 49
    assert min(abs(a - b) for a in test for b in others) == 11  # >= 10 slices lie between, and no more are dropped
    assert others == [z for z in tissue_z if all(abs(z - t) > 10 for t in test)]
    outside = np.ones(truth.shape[:2], bool)
    outside[6:190, 25:209] = False
    assert not truth[outside].any() and not vol["t1"][outside].any()  # the crop loses no voxel
    for z in (test[0], others[0], others[-1], 80):
        image, mask = _read(root, "images", f"z{z:03d}"), _read(root, "masks", f"z{z:03d}")
        assert image.shape == mask.shape == (184, 184) and image.dtype == mask.dtype == np.uint8
        assert np.array_equal(mask, np.flipud(truth[6:190, 25:209, z].T))
        assert np.array_equal(image, np.flipud(vol["t1"][6:190, 25:209, z].T))
    assert set(np.unique(np.concatenate([_read(root, "masks", s).ravel() for s in _stems(root)]))) == {0, 1, 2}
    assert json.loads((root / "classes.json").read_text()) == {
        "0": "background/CSF",
        "1": "grey matter",
        "2": "white matter",
    }
    with open(root / "cases.csv") as f:
        cases = {row["stem"]: row["case"] for row in csv.DictReader(f)}
    assert sorted(cases) == _stems(root)
    for case in set(cases.values()):
        members = [int(s[1:]) for s, c in cases.items() if c == case]
        assert len({z in test for z in members}) == 1  # a case is all test or all train/val
        assert max(members) - min(members) == len(members) - 1 and (set(members) <= set(test) or len(members) <= 4)


def test_nuclei_tiles_and_no_nucleus_shared(nuclei):
    import tifffile

    root, package = nuclei
    image = tifffile.imread(package / "data/images/img2d.tif")
    instances = tifffile.imread(package / "data/images/mask2d.tif")
    test = (root / "test.txt").read_text().split()
    stems = _stems(root)
    assert test == seg_real.test_stems("stardist-nuclei") and len(test) == 16 and len(stems) == 56
    ids = {}
    for stem in stems:
        y, x = int(stem[1:4]), int(stem[5:8])
        tile, mask = _read(root, "images", stem), _read(root, "masks", stem)
        assert tile.shape == mask.shape == (64, 64) and y % 64 == 0 and x % 64 == 0
        assert np.array_equal(tile, image[y : y + 64, x : x + 64])
        assert np.array_equal(mask, (instances[y : y + 64, x : x + 64] != 0).astype(np.uint8))
        ids[stem] = set(np.unique(instances[y : y + 64, x : x + 64])) - {0}
    in_test = set().union(*(ids[s] for s in test))
    in_rest = set().union(*(ids[s] for s in stems if s not in test))
    assert in_test and in_rest and not in_test & in_rest
    assert all(int(s[5:8]) >= 384 for s in test) and all(int(s[5:8]) + 64 <= 320 for s in stems if s not in test)
    values = np.concatenate([_read(root, "masks", s).ravel() for s in stems])
    assert set(np.unique(values)) == {0, 1} and 0.1 < values.mean() < 0.3


def test_materialise_reuses_and_completes(nuclei, tmp_path):
    root, _ = nuclei
    first = root / "images" / "y000x000.png"
    stamp = first.stat().st_mtime_ns
    assert seg_real.materialise("stardist-nuclei", root) == root and first.stat().st_mtime_ns == stamp
    out = seg_real.materialise("stardist-nuclei", tmp_path / "set")
    (out / ".medpeft-seg-real.json").unlink()
    (out / "masks" / "y000x000.png").unlink()
    seg_real.materialise("stardist-nuclei", out)
    assert (out / "masks" / "y000x000.png").is_file() and not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_unknown_set_and_default_dir(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="unknown real segmentation set 'kvasir'"):
        seg_real.materialise("kvasir", tmp_path)
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path))
    assert seg_real.default_dir("icbm152-tissue") == tmp_path / "seg" / "icbm152-tissue"
