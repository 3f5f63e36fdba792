"""Dataset loaders: MedFMC, MedMNIST, ISIC 2018, CSV and folders."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpeft.data import (
    check_images,
    load_csv,
    load_folder,
    load_isic,
    load_medfmc,
    load_medmnist,
    read_image,
    read_isic_csv,
)
from medpeft.errors import UserError

MEDFMC = Path(__file__).parent / "data"
NPZ = Path(__file__).parent / "data" / "pneumoniamnist.npz"


@pytest.mark.skipif(not MEDFMC.is_dir(), reason="official MedFMC split files not available")
def test_load_medfmc_official_lists():
    splits = load_medfmc(MEDFMC, "chest", 1, 1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (19, 960, 1161)
    assert splits.train.labels.shape == (19, 19) and splits.train.labels.dtype == np.uint8
    assert splits.train.sources[0] == str(MEDFMC / "chest" / "images" / splits.train.names[0])
    colon = load_medfmc(MEDFMC, "colon", 10, 1, test_list="test_WithoutLabel.txt")
    assert colon.test.labels is None and len(colon.test) == 4355 and " " in colon.test.names[0]
    assert colon.train.labels.dtype == np.int64 and colon.train.labels.shape == (512,)
    endo = load_medfmc(MEDFMC, "endo", 5, 1, test_list=MEDFMC / "endo" / "val_20.txt")
    assert len(endo.test) == 186 and endo.test.labels.shape == (186, 4)
    with pytest.raises(
        UserError,
        match=r"endo_5-shot_train_exp3\.txt not found.*1-shot exp1, 5-shot exp1, "
        r"10-shot exp1",
    ):
        load_medfmc(MEDFMC, "endo", 5, 3)
    unique = len({*splits.train.names, *splits.val.names, *splits.test.names})
    with pytest.raises(
        UserError,
        match=rf"{unique} of {unique} images .* missing: [^,]+png, [^,]+png, [^,]+png "
        rf"and {unique - 3} more$",
    ):
        check_images(splits)
    with pytest.raises(UserError, match="chest/images/"):
        splits.check_images()
    with pytest.raises(UserError, match="cannot read image .*images"):
        read_image(splits.train.sources[0])
    with pytest.raises(UserError, match="nope.txt"):
        load_medfmc(MEDFMC, "chest", 1, 1, test_list="nope.txt")
    with pytest.raises(UserError, match="isic"):
        load_medfmc(MEDFMC, "isic", 1, 1)


@pytest.mark.skipif(not NPZ.is_file(), reason="pneumoniamnist.npz not available")
def test_load_medmnist_real_npz():
    data = np.load(NPZ)
    for shots in (1, 5):
        splits = load_medmnist(NPZ, shots, exp=1)
        assert splits.task.num_classes == 2 and not splits.task.multilabel
        assert np.bincount(splits.train.labels).tolist() == [shots, shots]
        assert len(splits.val) == len(data["val_labels"]) and len(splits.test) == len(data["test_labels"])
        assert np.array_equal(splits.test.labels, data["test_labels"].ravel())
    assert set(load_medmnist(NPZ, 1, 1).train.names) <= set(load_medmnist(NPZ, 5, 1).train.names)
    assert load_medmnist(NPZ, 5, 1).train.names != load_medmnist(NPZ, 5, 2).train.names
    img = read_image(splits.train.sources[0])
    assert img.mode == "RGB" and img.size == (28, 28)
    i = int(splits.train.names[0].split("_")[1])
    assert np.array_equal(np.asarray(img)[..., 1], data["train_images"][i])


def test_load_medmnist_multilabel_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {f"{p}_images": rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8) for p in ("train", "val", "test")}
    arrays |= {f"{p}_labels": (rng.random((30, 3)) < 0.4).astype(np.uint8) for p in ("train", "val", "test")}
    np.savez(tmp_path / "toymnist.npz", **arrays)
    splits = load_medmnist(tmp_path / "toymnist.npz", 2, 1)
    assert splits.task.multilabel and splits.task.classes == ("0", "1", "2") and splits.train.labels.shape == (6, 3)
    np.savez(tmp_path / "broken.npz", train_images=arrays["train_images"])
    with pytest.raises(UserError, match="broken.npz lacks .*train_labels"):
        load_medmnist(tmp_path / "broken.npz", 1, 1)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.npz"):
        load_medmnist(tmp_path / "junk.npz", 1, 1)
    with pytest.raises(UserError, match="absent.npz not found"):
        load_medmnist(tmp_path / "absent.npz", 1, 1)
    monkeypatch.setitem(__import__("sys").modules, "medmnist", None)  # not installed
    with pytest.raises(UserError, match=r"\.npz"):
        load_medmnist("pathmnist", 1, 1, root=tmp_path)
    assert load_medmnist("toymnist", 1, 1, root=tmp_path).task.name == "toymnist"  # found at root


ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def write_isic(root, split, per_class, offset, rows=None):
    """A miniature ISIC 2018 Task 3 split in the official layout."""
    inputs = root / f"ISIC2018_Task3_{split}_Input"
    truth = root / f"ISIC2018_Task3_{split}_GroundTruth"
    inputs.mkdir(parents=True)
    truth.mkdir()
    ids = []
    with open(truth / f"ISIC2018_Task3_{split}_GroundTruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *ISIC_CLASSES])
        for c in range(7):
            for _ in range(per_class):
                ids.append(f"ISIC_{offset + len(ids):07d}")
                w.writerow([ids[-1], *("1.0" if j == c else "0.0" for j in range(7))])
                Image.new("RGB", (12, 10), (c * 30, 0, 0)).save(inputs / f"{ids[-1]}.jpg")
        for row in rows or []:
            w.writerow(row)
    return ids


def test_load_isic(tmp_path):
    root = tmp_path / "unpacked" / "isic2018"
    write_isic(root, "Training", 6, 0)
    val_ids = write_isic(root, "Validation", 2, 1000)
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._ISIC2018_Task3_Training_GroundTruth.csv").write_bytes(b"\x00\x05")
    splits = load_isic(tmp_path, shots=2, exp=1)
    assert splits.task.classes == tuple(ISIC_CLASSES)
    assert np.bincount(splits.train.labels).tolist() == [2] * 7
    assert splits.test.names == val_ids  # no test ground truth: the official val set is the test set
    assert len(splits.val) == 7 * 4 and not set(splits.val.names) & set(splits.train.names)
    assert not set(splits.val.names) & set(val_ids)
    splits.check_images()
    assert read_image(splits.train.sources[0]).size == (12, 10)
    test_ids = write_isic(root, "Test", 3, 2000)
    splits = load_isic(tmp_path, shots=1, exp=2)
    assert splits.val.names == val_ids and splits.test.names == test_ids and len(splits.train) == 7
    assert splits.test.labels.tolist() == np.repeat(np.arange(7), 3).tolist()


def test_isic_rows_must_be_one_hot(tmp_path):
    write_isic(tmp_path, "Training", 1, 0, rows=[["ISIC_9", "1.0", "1.0", "0", "0", "0", "0", "0"]])
    with pytest.raises(UserError, match=r"Training_GroundTruth\.csv, line 9: expected .*one-hot"):
        load_isic(tmp_path, 1, 1)
    with pytest.raises(UserError, match="Training_GroundTruth.csv"):
        load_isic(tmp_path / "ISIC2018_Task3_Training_Input", 1, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,MEL,NV\nx,1,0\n")
    with pytest.raises(UserError, match="line 1: expected header"):
        read_isic_csv(bad)


def make_images(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (6, 6), 128).save(folder / name)


def test_load_csv_class_names_and_split_column(tmp_path):
    rows = [
        (f"img/{s}{i}.png", "benign" if i % 2 else "malignant", s) for s in ("train", "val", "test") for i in range(10)
    ]
    make_images(tmp_path, [r[0] for r in rows])
    path = tmp_path / "lesions.csv"
    path.write_text("image,label,split\n" + "".join(",".join(r) + "\n" for r in rows))
    splits = load_csv(path)
    assert splits.task.classes == ("benign", "malignant") and not splits.task.multilabel
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 10, 10)
    assert splits.train.labels.tolist() == [1, 0] * 5
    splits.check_images()
    few = load_csv(path, shots=2)
    assert np.bincount(few.train.labels).tolist() == [2, 2] and few.val.names == splits.val.names


def test_load_csv_multilabel_without_split(tmp_path):
    names = [f"{i}.png" for i in range(40)]
    make_images(tmp_path / "pics", names)
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 3)) < 0.4).astype(int)
    path = tmp_path / "chest.csv"
    path.write_text("image,a,b,c\n" + "".join(f"{n},{','.join(map(str, y))}\n" for n, y in zip(names, labels)))
    splits = load_csv(path, image_root=tmp_path / "pics", shots=2, val_per_class=2)
    assert splits.task.multilabel and splits.task.classes == ("a", "b", "c") and len(splits.train) == 6
    parts = [set(splits.train.names), set(splits.val.names), set(splits.test.names)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(names)
    splits.check_images()
    with pytest.raises(UserError, match="no val split"):
        load_csv(path)
    path.write_text("image,a,b,c\nx.png,1,0,0\ny.png,1,2,0\n")
    with pytest.raises(UserError, match=r"chest\.csv, line 3: expected 0 or 1"):
        load_csv(path, shots=1)
    path.write_text("file,label\nx.png,1\n")
    with pytest.raises(UserError, match="'image' column"):
        load_csv(path, shots=1)
    with pytest.raises(UserError, match="missing.csv not found"):
        load_csv(tmp_path / "missing.csv")


def test_load_folder(tmp_path):
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        for cls in ("cat", "dog"):
            make_images(tmp_path / "pets", [f"{split}/{cls}/{i}.png" for i in range(n)])
    splits = load_folder(tmp_path / "pets", shots=3)
    assert splits.task.classes == ("cat", "dog") and np.bincount(splits.train.labels).tolist() == [3, 3]
    assert (len(splits.val), len(splits.test)) == (4, 6) and splits.val.names[0] == "val/cat/0.png"
    flat = tmp_path / "flat"
    for cls in ("a", "b", "c"):
        make_images(flat, [f"{cls}/{i}.jpg" for i in range(6)])
    splits = load_folder(flat, shots=1, val_per_class=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 6, 9)
    assert np.array_equal(splits.test.labels, np.repeat([0, 1, 2], 3))
    (tmp_path / "pets" / "val" / "bird").mkdir()
    with pytest.raises(UserError, match="bird"):
        load_folder(tmp_path / "pets")
