"""MedFMC annotation lists, checked against the official files and an independent parser."""

import re
from pathlib import Path

import numpy as np
import pytest

from medpeft.data import TASKS, get_task, read_annotations, read_list, read_names, write_annotations
from medpeft.errors import UserError

MEDFMC = Path(__file__).parent / "data"
pytestmark = pytest.mark.skipif(not MEDFMC.is_dir(), reason="official MedFMC split files not available")

# Independent line grammars (regexes), written from the protocol document.
GRAMMAR = {
    "chest": re.compile(r"(\S+) ((?:[01],){18}[01])"),
    "endo": re.compile(r"(.+?) ([01] [01] [01] [01])"),
    "colon": re.compile(r"(.+) ([01])"),
}


def independent_parse(path, task):
    out = []
    for line in Path(path).read_text().split("\n"):
        if line:
            m = GRAMMAR[task].fullmatch(line)
            assert m, line
            out.append((m[1], [int(v) for v in re.split("[, ]", m[2])]))
    return out


def labelled_files():
    return [(t, p) for t in GRAMMAR for p in sorted((MEDFMC / t).glob("*.txt")) if p.name != "test_WithoutLabel.txt"]


@pytest.mark.parametrize("task,path", labelled_files(), ids=lambda x: getattr(x, "name", x))
def test_every_official_file_matches_the_independent_parser(task, path):
    expected = independent_parse(path, task)
    items = read_annotations(path, task)
    assert len(items) == len(expected) == path.read_text().count("\n")
    assert [n for n, _ in items] == [n for n, _ in expected]
    for (_, label), (_, want) in zip(items, expected):
        if TASKS[task].multilabel:
            assert label.dtype == np.uint8 and label.tolist() == want
        else:
            assert isinstance(label, int) and label == want[0]


@pytest.mark.parametrize("task,count", [("chest", 2708), ("colon", 4355), ("endo", 2055)])
def test_names_only_lists(task, count):
    path = MEDFMC / task / "test_WithoutLabel.txt"
    names = read_names(path)
    assert names == path.read_text().splitlines() and len(names) == count
    assert read_list(path, task) == (names, None)
    if task == "colon":
        assert all(" " in n and n.endswith(".png") for n in names)


def test_read_names_of_a_labelled_list_strips_labels():
    for task in GRAMMAR:
        path = MEDFMC / task / "trainval.txt"
        assert read_names(path, task) == [n for n, _ in independent_parse(path, task)]
    names, labels = read_list(MEDFMC / "colon" / "test_WithLabel.txt", "colon")
    assert len(names) == len(labels) == 3296


def positives(task, name):
    return np.sum([label for _, label in read_annotations(MEDFMC / task / name, task)], axis=0).tolist()


def test_counts_quoted_in_the_protocol():
    sizes = {
        (t, f): len(read_annotations(MEDFMC / t / f, t))
        for t in GRAMMAR
        for f in ("trainval.txt", "train_20.txt", "val_20.txt", "test_WithLabel.txt")
    }
    assert [sizes[t, "trainval.txt"] for t in ("chest", "colon", "endo")] == [979, 2358, 929]
    assert [sizes[t, "test_WithLabel.txt"] for t in ("chest", "colon", "endo")] == [1161, 3296, 881]
    assert [(sizes[t, "train_20.txt"], sizes[t, "val_20.txt"]) for t in ("chest", "colon", "endo")] == [
        (783, 196),
        (1677, 681),
        (743, 186),
    ]
    assert positives("chest", "trainval.txt") == [
        255,
        129,
        193,
        245,
        163,
        91,
        97,
        135,
        135,
        112,
        55,
        49,
        34,
        43,
        17,
        19,
        12,
        10,
        10,
    ]
    assert positives("chest", "test_WithLabel.txt") == [
        428,
        199,
        273,
        271,
        224,
        161,
        212,
        141,
        151,
        157,
        124,
        136,
        44,
        93,
        35,
        20,
        13,
        4,
        12,
    ]
    assert positives("endo", "trainval.txt") == [220, 250, 153, 108]
    assert positives("endo", "test_WithLabel.txt") == [196, 222, 69, 0]
    colon = [label for _, label in read_annotations(MEDFMC / "colon" / "trainval.txt", "colon")]
    assert (colon.count(0), colon.count(1)) == (1471, 887)
    colon_test = [label for _, label in read_annotations(MEDFMC / "colon" / "test_WithLabel.txt", "colon")]
    assert (colon_test.count(0), colon_test.count(1)) == (2296, 1000)
    chest = read_annotations(MEDFMC / "chest" / "trainval.txt", "chest")
    assert sum(label.sum() == 0 for _, label in chest) == 261


def test_duplicate_lines_are_kept():
    items = read_annotations(MEDFMC / "chest" / "chest_10-shot_train_exp1.txt", "chest")
    assert len(items) == 190 and len({n for n, _ in items}) < 190


def test_crlf_blank_lines_and_round_trip(tmp_path):
    items = read_annotations(MEDFMC / "endo" / "endo_1-shot_train_exp1.txt", "endo")
    for task in GRAMMAR:
        src = MEDFMC / task / f"{task}_1-shot_train_exp1.txt"
        out = tmp_path / f"{task}.txt"
        write_annotations(out, read_annotations(src, task), task)
        assert out.read_bytes() == src.read_bytes()
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\r\n".join(f"{n} {' '.join(map(str, y))}".encode() for n, y in items) + b"\r\n\r\n\n")
    assert [(n, y.tolist()) for n, y in read_annotations(crlf, "endo")] == [(n, y.tolist()) for n, y in items]


@pytest.mark.parametrize(
    "task,line,what",
    [
        ("chest", "a.png " + ",".join("0" * 18), "19 comma-separated"),
        ("chest", "a.png " + ",".join("0" * 18 + "2"), "19 comma-separated"),
        ("endo", "x_2021.01_0001_1.png 0 1 2 0", "4 space-separated"),
        ("endo", "x_2021.01_0001_1.png 0 1 0", "4 space-separated"),
        ("endo", "x_2021.01_0001_1.png 0 1 0 0 1", "4 space-separated"),
        ("colon", "2019-1_2019-05-28 17_55_39-lv1-1-2-3-4p0001.png 0 1", "class index 0..1"),
        ("colon", "2019-1_2019-05-28 17_55_39-lv1-1-2-3-4p0001.png", "class index 0..1"),
        ("colon", "2019-1_2019-05-28 17_55_39-lv1-1-2-3-4p0001.png 2", "class index 0..1"),
        ("colon", "1", "class index 0..1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, task, line, what):
    good = {"chest": "b.png " + ",".join("0" * 19), "endo": "y_2021.01_0001_2.png 1 0 0 0", "colon": "r 1_p0001.png 1"}[
        task
    ]
    path = tmp_path / "bad.txt"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(UserError, match=r"bad\.txt, line 3: expected .*" + what) as info:
        read_annotations(path, task)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(UserError, match="nope.txt"):
        read_annotations(tmp_path / "nope.txt", "chest")
    with pytest.raises(UserError, match="chest, colon, endo"):
        get_task("lung")
    assert get_task("endo").num_classes == 4 and get_task(TASKS["colon"]) is TASKS["colon"]
