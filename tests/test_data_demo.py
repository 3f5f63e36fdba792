"""The built-in demo dataset: deterministic, in the MedFMC layout, learnable classes."""

import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medpeft.data import TASKS, load_medfmc, make_demo_data, read_annotations, read_image, read_names
from medpeft.errors import UserError


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert make_demo_data(root, seed=0) == ["endo", "colon"]
    return root


def test_same_seed_same_bytes(demo, tmp_path):
    make_demo_data(tmp_path / "again", seed=0)
    assert snapshot(tmp_path / "again") == snapshot(demo)
    make_demo_data(tmp_path / "again", seed=0)  # a demo folder is replaced, not refused
    assert snapshot(tmp_path / "again") == snapshot(demo)
    make_demo_data(tmp_path / "other", seed=1)
    assert snapshot(tmp_path / "other").keys() != snapshot(demo).keys()


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "endo").mkdir()
    (tmp_path / "endo" / "trainval.txt").write_text("precious\n")
    with pytest.raises(UserError, match="not a medpeft demo folder"):
        make_demo_data(tmp_path)
    assert (tmp_path / "endo" / "trainval.txt").read_text() == "precious\n"


def test_layout_names_and_sizes(demo):
    for task in ("endo", "colon"):
        folder = demo / task
        trainval = read_annotations(folder / "trainval.txt", task)
        test = read_annotations(folder / "test_WithLabel.txt", task)
        unlabelled = read_names(folder / "test_WithoutLabel.txt")
        assert 60 <= len(trainval) <= 100 and 60 <= len(test) <= 80 and len(unlabelled) == 20
        names = [n for n, _ in trainval + test] + unlabelled
        assert len(set(names)) == len(names)
        assert {p.name for p in (folder / "images").iterdir()} == set(names)
        for part in (trainval, test):  # every class has positives
            labels = np.array([y for _, y in part])
            counts = labels.sum(0) if task == "endo" else np.bincount(labels, minlength=2)
            assert (counts > 0).all()
        if task == "endo":
            assert all(re.fullmatch(r"\d{5}_\d{4}\.\d{2}_\d{4}_\d+\.png", n) for n in names)
            assert len({n[:18] for n, _ in trainval}) >= 10
        else:
            assert all(" " in n and re.search(r"p\d{4}\.png$", n) for n in names)
            regions = {}
            for n, y in trainval + test:
                assert regions.setdefault(n[:-9], y) == y  # a region has one label
            assert len(regions) >= 20


@pytest.mark.parametrize("task", ["endo", "colon"])
@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("exp", [1, 2])
def test_load_medfmc_on_demo(demo, task, shots, exp):
    splits = load_medfmc(demo, task, shots, exp)
    splits.check_images()
    assert splits.task == TASKS[task] and len(splits.test) == len(read_names(demo / task / "test_WithLabel.txt"))
    assert not set(splits.train.names) & set(splits.val.names)
    unlabelled = load_medfmc(demo, task, shots, exp, test_list="test_WithoutLabel.txt")
    assert unlabelled.test.labels is None and len(unlabelled.test) == 20
    image = read_image(splits.train.sources[0])
    assert image.size == (64, 64) and image.mode == "RGB"


def colour_statistics(samples):
    """Per image and channel: mean, 5th and 95th percentile of the raw pixels (position-free features)."""
    pixels = [np.asarray(read_image(s), float).reshape(-1, 3) for s in samples.sources]
    return np.stack([np.concatenate([p.mean(0), *np.percentile(p, [5, 95], axis=0)]) for p in pixels])


def test_classes_are_visible_in_pixels(demo):
    """Simple classifiers on colour statistics, fitted on a 5-shot train set, beat chance on the test set."""
    colon = load_medfmc(demo, "colon", 5, 1)
    train, test = colour_statistics(colon.train), colour_statistics(colon.test)
    means = np.stack([train[colon.train.labels == c].mean(0) for c in (0, 1)])
    predicted = np.linalg.norm(test[:, None] - means[None], axis=2).argmin(1)
    assert (predicted == colon.test.labels).mean() > 0.9
    endo = load_medfmc(demo, "endo", 5, 1)
    train, test = colour_statistics(endo.train), colour_statistics(endo.test)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    aucs = [
        roc_auc_score(endo.test.labels[:, c], model.fit(train, endo.train.labels[:, c]).decision_function(test))
        for c in range(4)
    ]
    assert np.mean(aucs) > 0.7
