"""The `medpeft` command end to end on the official MedFMC split files (placeholder images), and its errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from medpeft.data import read_names

OFFICIAL = Path(__file__).parent / "data"
TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--no-pretrained",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--lr",
    "0.01",
]


def official_root(tmp_path, task, shots=1, held_out=None):
    """A MedFMC root with the official lists of ``task`` and a small random PNG for every image they name;
    ``held_out``: the validation and test lists thinned to at most that many lines, every k-th kept (ColonPath's
    name 2,328 validation and 3,296 + 4,355 test images, sorted by class: what a test of the pipeline needs is their
    format and both classes, not their length)."""
    folder = tmp_path / task
    (folder / "images").mkdir(parents=True)
    lists = [
        f"{task}_{shots}-shot_train_exp1.txt",
        f"{task}_{shots}-shot_val_exp1.txt",
        "test_WithLabel.txt",
        "test_WithoutLabel.txt",
    ]
    rng = np.random.default_rng(0)
    for name in lists:
        lines = (OFFICIAL / task / name).read_text(encoding="utf-8").splitlines(keepends=True)
        if held_out is not None and "train" not in name:
            lines = lines[:: math.ceil(len(lines) / held_out)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
        for image in read_names(folder / name, task if "Without" not in name else None):
            path = folder / "images" / image
            if not path.exists():
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return tmp_path


@pytest.mark.parametrize("task,method,classes", [("chest", "ept", 19), ("colon", "vpt", 2), ("endo", "lora", 4)])
def test_train_on_official_held_out_splits(tmp_path, capsys, task, method, classes):
    root = official_root(tmp_path / "data", task, held_out=400)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--task",
            task,
            "--data-root",
            str(root),
            "--shots",
            "1",
            "--exp",
            "1",
            "--method",
            method,
            *TINY,
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "selected epoch 1" in stdout
    record = json.loads((out / "run.json").read_text())
    test_names = read_names(root / task / "test_WithLabel.txt", task)
    assert set(record["result"]["test_metrics"]) == (
        {"accuracy", "AUC", "ECE", "Brier"} if task == "colon" else {"mAP", "AUC", "ECE", "Brier"}
    )
    rows = (out / f"{task}_1-shot_submission.csv").read_text().splitlines()
    assert len(rows) == len(test_names) and [r.rsplit(",", classes)[0] for r in rows] == test_names
    probs = np.array([[float(v) for v in r.rsplit(",", classes)[1:]] for r in rows])
    assert probs.shape == (len(test_names), classes) and ((probs >= 0) & (probs <= 1)).all()
    assert all(len(v.split(".")[1]) == 8 for v in rows[0].rsplit(",", classes)[1:])
    if task == "colon":
        np.testing.assert_allclose(probs.sum(1), 1, atol=3e-8)
    assert record["spec"]["method"] == method and record["spec"]["train"]["lr"] == 0.01
    assert record["model"]["num_classes"] == classes

    code, stdout, stderr = run_cli(["predict", str(out), "--list", str(root / task / "test_WithoutLabel.txt")], capsys)
    assert code == 0, stderr
    written = out / "test_WithoutLabel" / f"{task}_1-shot_submission.csv"
    rows = written.read_text().splitlines()
    assert [r.rsplit(",", classes)[0] for r in rows] == read_names(root / task / "test_WithoutLabel.txt")


def test_user_mistakes_print_one_line(tmp_path, capsys):
    root = official_root(tmp_path / "data", "endo")
    base = ["train", "--task", "endo", "--data-root", str(root), "--shots", "1", *TINY, "--out", str(tmp_path / "r")]

    missing = sorted((root / "endo" / "images").iterdir())[3]
    missing.unlink()
    code, _, err = run_cli([*base, "--method", "linear"], capsys)
    assert code != 0 and err.count("\n") == 1 and missing.name in err and "missing" in err

    Image.new("RGB", (8, 8)).save(missing)
    train_list = root / "endo" / "endo_1-shot_train_exp1.txt"
    original = train_list.read_text()
    lines = original.splitlines()
    lines[2] = lines[2] + " 1"  # five labels instead of four
    train_list.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli([*base, "--method", "linear"], capsys)
    assert code != 0 and err.count("\n") == 1 and "line 3" in err and "endo_1-shot_train_exp1.txt" in err
    train_list.write_text(original)

    for args, expected in [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "ept", "--opt", "lenght=3"], "unknown option(s) ['lenght']"),
        (["--method", "ept", "--opt", "prompt_length"], "expected key=value"),
        (["--method", "ept", "--shots", "7"], "7-shot_train_exp1.txt not found; available"),
        (["--method", "ept", "--weights", str(tmp_path / "w.pth")], "w.pth not found"),
        (["--method", "ept", "--momentun", "0"], "No such option '--momentun'"),
        (["--method", "ept", "--epochs", "0"], "--epochs must be at least 1"),
        (["--method", "lora", "--opt", "r=0"], "method 'lora': option r=0 must be at least 1"),
        (
            ["--method", "ept", "--img-size", "30"],
            "--img-size 30 is not a multiple of the model's patch size 16: use 16 or 32",
        ),
        (
            ["--method", "ept", "--backbone", "vit_tiny_patch16_224.augreg_in21k", "--pretrained"],  # hub offline
            "pass --weights PATH (a local checkpoint) or --no-pretrained",
        ),
        (
            ["--method", "ept", "--backbone", "auto"],
            "--backbone auto takes the architecture of --weights: pass --weights PATH",
        ),
    ]:
        code, _, err = run_cli([*base, *args], capsys)
        assert code != 0 and err.count("\n") == 1 and expected in err, (args, err)
        assert "Traceback" not in err


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medpeft.cli",
            "train",
            "--task",
            "chest",
            "--data-root",
            str(tmp_path),
            "--shots",
            "1",
            "--no-pretrained",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("medpeft: error:") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
