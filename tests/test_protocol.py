"""The paper's protocol end to end with real training: validation-only selection, the ablation options."""

import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli import OFFICIAL, official_root, run_cli

from medpeft.bench import BenchConfig, run_bench
from medpeft.cli.options import parse_options
from medpeft.data import TASKS, make_demo_data, read_annotations, read_names, write_annotations
from medpeft.experiment import read_record

TINY = {
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "img_size": 32,
    "train": {"epochs": 2, "batch_size": 8},
}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol") / "data"
    make_demo_data(root)
    return root


def search_bench(root, out):
    config = BenchConfig.from_dict(
        {
            "methods": [{"method": "lora", "search": {"lr": [0.001, 0.05, 0.2]}}],
            "tasks": ["colon"],
            "data_root": str(root),
            "shots": [5],
            "exps": [1, 2],
            **TINY,
        }
    )
    return run_bench(config, out, progress=False)


def test_the_test_split_never_influences_the_choice(demo_root, tmp_path):
    """Shuffle the test labels (and nothing else): the same candidates are chosen with the same validation scores."""
    first = search_bench(demo_root, tmp_path / "a")
    shuffled = tmp_path / "shuffled"
    shutil.copytree(demo_root, shuffled)
    test_list = shuffled / "colon" / "test_WithLabel.txt"
    items = read_annotations(test_list, "colon")
    labels = np.random.default_rng(0).permutation([label for _, label in items])
    write_annotations(test_list, [(name, int(y)) for (name, _), y in zip(items, labels)], TASKS["colon"])
    second = search_bench(shuffled, tmp_path / "b")
    chosen = lambda runs: {r.spec.cell: (r.spec.candidate, r.result.val_best) for r in runs if r.selected}  # noqa
    assert chosen(first) == chosen(second) and len(chosen(first)) == 2
    assert [r.result.history for r in first] == [r.result.history for r in second]
    assert [r.test for r in first] != [r.test for r in second]  # the test numbers did change


def test_prompt_gradient_off_trains_the_head_only(tmp_path, capsys):
    root = official_root(tmp_path / "data", "colon", held_out=300)
    for method in ("vpt", "ept"):
        out = tmp_path / method
        code, _, err = run_cli(
            [
                "train",
                "--task",
                "colon",
                "--data-root",
                str(root),
                "--shots",
                "1",
                "--method",
                method,
                "--opt",
                "train_prompt=false",
                "--opt",
                "prompt_length=3",
                "--backbone",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ],
            capsys,
        )
        assert code == 0, err
        record = read_record(out)
        assert record.result.trainable_params == 192 * 2 + 2  # the head only: the prompts are frozen


def test_twenty_percent_of_the_training_set(tmp_path, capsys):
    """--shots 20% reads MedFMC's official train_20.txt / val_20.txt; a bench takes "20%" among its shots."""
    root = official_root(tmp_path / "data", "endo", shots=1)
    for name in ("train_20.txt", "val_20.txt"):
        shutil.copy(OFFICIAL / "endo" / name, root / "endo" / name)
        for image in read_names(root / "endo" / name, "endo"):
            if not (root / "endo" / "images" / image).exists():
                Image.new("RGB", (8, 8)).save(root / "endo" / "images" / image)
    config = BenchConfig.from_dict(
        {
            "methods": ["linear"],
            "tasks": ["endo"],
            "data_root": str(root),
            "shots": ["20%"],
            "exps": [1],
            **{**TINY, "train": {"epochs": 1, "batch_size": 64}},
        }
    )
    (record,) = run_bench(config, tmp_path / "bench", progress=False)
    assert record.spec.shots == "20%" and record.key == "linear/endo/20%-shot/exp1/seed0"
    assert "endo 20%-shot" in (tmp_path / "bench" / "summary.md").read_text()
    code, _, err = run_cli(
        [
            "train",
            "--task",
            "endo",
            "--data-root",
            str(root),
            "--shots",
            "20%",
            "--exp",
            "2",
            "--method",
            "linear",
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "one sampling" in err


def test_layer_ranges_from_the_command_line():
    assert parse_options(("layers=0-5",)) == {"layers": [0, 1, 2, 3, 4, 5]}
    assert parse_options(("layers=11-9",)) == {"layers": [11, 10, 9]}  # top-down, in that order
    assert parse_options(("layers=0,3-4", "prompt_length=50")) == {"layers": [0, 3, 4], "prompt_length": 50}
    assert parse_options(("layers=[0, 1]", "lr=1e-3", "name=a-b")) == {"layers": [0, 1], "lr": 1e-3, "name": "a-b"}
