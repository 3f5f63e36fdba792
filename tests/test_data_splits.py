"""Few-shot split generation: MedFMC grouping rules, disjoint val, determinism."""

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from medpeft.data import (
    TaskSpec,
    medfmc_few_shot,
    per_class_few_shot,
    read_annotations,
    split_path,
    write_medfmc_splits,
)
from medpeft.errors import UserError

MEDFMC = Path(__file__).parent / "data"
needs_medfmc = pytest.mark.skipif(not MEDFMC.is_dir(), reason="official MedFMC split files not available")


def pool(task):
    return read_annotations(MEDFMC / task / "trainval.txt", task)


def check_chest(train, items, k):
    """19 blocks of K lines; block c holds K distinct c-positive images (every class has >= 10 positives)."""
    assert len(train) == 19 * k
    for c in range(19):
        block = train[c * k : (c + 1) * k]
        assert all(label[c] == 1 for _, label in block) and len({n for n, _ in block}) == k


def check_endo(train, items, k):
    """Train is 4 consecutive class blocks; block c = every c-positive image of min(K, #studies) studies."""
    names = [n for n, _ in train]

    def positives(c, studies):
        return sorted(n for n, y in items if y[c] and n[:18] in studies)

    def parse(start, c):
        if c == 4:
            return start == len(names)
        want = min(k, len({n[:18] for n, y in items if y[c]}))
        for end in range(start + 1, len(names) + 1):
            studies = {n[:18] for n in names[start:end]}
            if len(studies) > want:
                break
            if len(studies) == want and sorted(names[start:end]) == positives(c, studies) and parse(end, c + 1):
                return True
        return False

    assert parse(0, 0)


def check_colon(train, items, k):
    """K regions per class, every patch of each, no duplicates."""
    regions = defaultdict(set)
    for n, y in train:
        regions[y].add(n[:-9])
    assert len(regions[0]) == len(regions[1]) == k
    assert sorted(n for n, _ in train) == sorted(n for n, _ in items if n[:-9] in regions[0] | regions[1])


CHECKS = {"chest": check_chest, "endo": check_endo, "colon": check_colon}


@needs_medfmc
@pytest.mark.parametrize("task", CHECKS)
@pytest.mark.parametrize("k", [1, 5, 10])
def test_official_train_files_obey_the_rules_we_implement(task, k):
    items = pool(task)
    CHECKS[task](read_annotations(MEDFMC / task / f"{task}_{k}-shot_train_exp1.txt", task), items, k)


@needs_medfmc
@pytest.mark.parametrize("task", CHECKS)
@pytest.mark.parametrize("k", [1, 5, 10])
def test_generated_splits_follow_the_rules_with_disjoint_val(task, k):
    items = pool(task)
    for seed in (0, 1):
        train, val = medfmc_few_shot(items, task, k, seed)
        CHECKS[task](train, items, k)
        train_names = {n for n, _ in train}
        assert not train_names & {n for n, _ in val}
        assert sorted(train_names | {n for n, _ in val}) == sorted({n for n, _ in items})
        pool_lines = {(n, str(y)) for n, y in items}
        assert all((n, str(y)) in pool_lines for n, y in train + val)


@needs_medfmc
@pytest.mark.parametrize("task", CHECKS)
def test_generation_is_seeded(task):
    items = pool(task)

    def names(seed):
        train, val = medfmc_few_shot(items, task, 5, seed)
        return [n for n, _ in train], [n for n, _ in val]

    assert names(3) == names(3)
    assert names(3)[0] != names(4)[0]


def test_class_with_fewer_groups_than_k_takes_them_all():
    items = [
        ("a.png", np.array([1, 0], np.uint8)),
        ("b.png", np.array([1, 1], np.uint8)),
        ("c.png", np.array([1, 0], np.uint8)),
        ("d.png", np.array([0, 0], np.uint8)),
    ]
    task = TaskSpec("toy", ("x", "y"), True)
    train, val = medfmc_few_shot(items, task, 2, 0)
    assert len(train) == 3 and train[2][0] == "b.png"
    assert [n for n, _ in val] == [n for n, _ in items if n not in {m for m, _ in train}]
    with pytest.raises(UserError, match="shots"):
        medfmc_few_shot(items, task, 0, 0)


def test_per_class_few_shot_multiclass():
    labels = np.repeat(np.arange(4), [3, 10, 20, 7])
    train, val = per_class_few_shot(labels, 5, seed=0)
    assert np.bincount(labels[train], minlength=4).tolist() == [3, 5, 5, 5]
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    train, val = per_class_few_shot(labels, 5, seed=0, val_per_class=2)
    assert np.bincount(labels[val], minlength=4).tolist() == [0, 2, 2, 2] and not set(train) & set(val)
    small, _ = per_class_few_shot(labels, 1, seed=0)
    assert set(small) <= set(train)  # nested for a fixed seed
    assert not np.array_equal(train, per_class_few_shot(labels, 5, seed=1)[0])
    assert np.array_equal(train, per_class_few_shot(labels, 5, seed=0)[0])


def test_per_class_few_shot_multilabel():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 5)) < 0.2).astype(np.uint8)
    train, val = per_class_few_shot(labels, 3, seed=(1, 2))
    assert len(train) == 15
    assert all(labels[train[c * 3 : (c + 1) * 3], c].all() for c in range(5))
    assert not set(train) & set(val) and set(train) | set(val) == set(range(200))
    _, val = per_class_few_shot(labels, 3, seed=(1, 2), val_per_class=4)
    assert not set(train) & set(val) and all(labels[val, c].sum() >= 4 for c in range(5))


@needs_medfmc
def test_write_medfmc_splits(tmp_path):
    (tmp_path / "endo").mkdir()
    shutil.copy(MEDFMC / "endo" / "trainval.txt", tmp_path / "endo")
    paths = write_medfmc_splits(tmp_path, "endo", [1, 5], [1, 2], seed=7)
    assert len(paths) == 8 and all(p.is_file() for p in paths)
    items = pool("endo")
    train = read_annotations(split_path(tmp_path, "endo", 5, 2, "train"), "endo")
    val = read_annotations(split_path(tmp_path, "endo", 5, 2, "val"), "endo")
    check_endo(train, items, 5)
    assert not {n for n, _ in train} & {n for n, _ in val}
    texts = {p.name: p.read_bytes() for p in paths}
    assert texts["endo_5-shot_train_exp1.txt"] != texts["endo_5-shot_train_exp2.txt"]
    with pytest.raises(UserError, match="endo_1-shot_train_exp1.txt already exists .*pass overwrite=True to") as err:
        write_medfmc_splits(tmp_path, "endo", [1, 5], [1, 2], seed=7)
    from medpeft.cli.data import splits
    from medpeft.cli.options import flag_namer

    assert "pass --overwrite to replace them" in err.value.named(flag_namer(splits))
    write_medfmc_splits(tmp_path, "endo", [1, 5], [1, 2], seed=7, overwrite=True)
    assert {p.name: p.read_bytes() for p in paths} == texts
    with pytest.raises(UserError, match="trainval.txt"):
        write_medfmc_splits(tmp_path, "colon", [1], [1])
