"""DICOM read as a viewer shows it, on pydicom's real test files; bad files give one line, before any training."""

import os
import shutil
import sys

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless
from test_cli import TINY, run_cli

from medpeft.data import check_image, is_image_file, load_csv, load_folder, read_image
from medpeft.errors import UserError

FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
MR = os.path.join(FILES, "MR_small.dcm")
CT = os.path.join(FILES, "CT_small.dcm")
MR_LOSSLESS = [
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


def pixels(source) -> np.ndarray:
    """The grey channel of :func:`read_image` (after checking that the three channels are equal)."""
    rgb = np.asarray(read_image(source))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and (rgb == rgb[..., :1]).all()
    return rgb[..., 0]


def stored(path) -> np.ndarray:
    """The stored values of a native little-endian 16-bit greyscale DICOM, read with numpy alone."""
    ds = pydicom.dcmread(path)
    assert ds.BitsAllocated == 16 and ds.SamplesPerPixel == 1 and not ds.file_meta.TransferSyntaxUID.is_compressed
    return np.frombuffer(ds.PixelData, "<i2" if ds.PixelRepresentation else "<u2").reshape(ds.Rows, ds.Columns)


def linear_window(x, center, width) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) from 0 to 255, rounded."""
    c, w = center - 0.5, width - 1
    t = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    return np.rint(t * 255)


def edited(path, out, **elements):
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(out)
    return out


def test_ct_and_mr_read_as_a_viewer_shows_them(tmp_path):
    for path in (CT, MR):
        img = read_image(path)
        assert img.mode == "RGB" and img.size == (pydicom.dcmread(path).Columns, pydicom.dcmread(path).Rows)
        assert len(np.unique(pixels(path))) > 150
    mr = stored(MR).astype(np.float64)
    assert np.array_equal(pixels(MR), linear_window(mr, 600, 1600))  # its WindowCenter/Width, no rescale
    hu = stored(CT) * 1.0 - 1024  # CT_small: RescaleSlope 1, RescaleIntercept -1024, no window: its own range
    assert np.array_equal(pixels(CT), np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255))
    windowed = edited(CT, tmp_path / "ct_window.dcm", WindowCenter=[40, 400], WindowWidth=[400, 2000])
    expected = linear_window(hu, 40, 400)  # the first window, after the rescale
    assert np.array_equal(pixels(windowed), expected) and (expected == 0).any() and (expected == 255).any()
    mono1 = edited(MR, tmp_path / "mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    assert np.array_equal(pixels(mono1), 255 - pixels(MR))


def test_a_voi_lut_comes_before_the_window(tmp_path):
    ds = pydicom.dcmread(MR)
    lut = np.rint(4095 * np.sqrt(np.arange(2000) / 1999)).astype(np.uint16)  # 12-bit, from stored value 100 on
    item = Dataset()
    item.add_new(0x00283002, "US", [2000, 100, 12])  # LUT Descriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    index = np.clip(stored(MR).astype(np.int64) - 100, 0, 1999)
    assert np.array_equal(pixels(tmp_path / "lut.dcm"), np.rint(lut[index] / 4095 * 255))


@pytest.mark.parametrize("name", MR_LOSSLESS)
def test_lossless_variants_read_as_the_original(name):
    path = os.path.join(FILES, name)
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        assert np.array_equal(pixels(path), pixels(MR))
    else:
        with pytest.raises(UserError, match=rf"{name}: .*medpeft\[dicom\]"):
            read_image(path)


def test_colour_dicom(tmp_path):
    ds = pydicom.dcmread(os.path.join(FILES, "examples_rgb_color.dcm"))
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)  # PlanarConfiguration 0
    assert np.array_equal(np.asarray(read_image(os.path.join(FILES, "examples_rgb_color.dcm"))), rgb)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))  # to YCbCr by PS3.3 C.7.6.3.1.2 (YBR_FULL)
    ybr = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
            0.5 * r - 0.418688 * g - 0.081312 * b + 128,
        ],
        -1,
    )
    ds.PixelData = np.clip(np.rint(ybr), 0, 255).astype(np.uint8).tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    assert np.abs(np.asarray(read_image(tmp_path / "ybr.dcm")).astype(int) - rgb).max() <= 2
    assert np.array_equal(
        np.asarray(read_image(os.path.join(FILES, "SC_rgb_rle_16bit.dcm"))),
        np.asarray(read_image(os.path.join(FILES, "SC_rgb_rle.dcm"))),
    )  # 16 bits stored: /65535
    palette = pydicom.dcmread(os.path.join(FILES, "examples_palette.dcm"))  # 256 entries of 16 bits
    index = np.frombuffer(palette.PixelData, np.uint8).reshape(palette.Rows, palette.Columns)
    luts = [np.frombuffer(getattr(palette, f"{c}PaletteColorLookupTableData"), "<u2") for c in ("Red", "Green", "Blue")]
    expected = np.rint(np.stack([lut[index] for lut in luts], -1) / 65535 * 255)
    assert np.array_equal(np.asarray(read_image(os.path.join(FILES, "examples_palette.dcm"))), expected)


def bad_files(tmp_path) -> dict:
    """One bad file of each kind: ``{kind: (path, what its error says)}``."""
    cut = tmp_path / "cut_rle.dcm"
    data = open(os.path.join(FILES, "MR_small_RLE.dcm"), "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 20)
    png = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(png)
    png.write_bytes(png.read_bytes()[:-20])
    return {
        "truncated": (os.path.join(FILES, "MR_truncated.dcm"), "pixel data is less than expected"),
        "cut_rle": (cut, "pixel data is missing or cut short"),
        "no_pixels": (os.path.join(FILES, "rtplan.dcm"), "without pixel data"),
        "frames": (os.path.join(FILES, "SC_rgb_rle_2frame.dcm"), "2 frames"),
        "garbage": (garbage, "not a DICOM file"),
        "png": (png, "cannot read image"),
    }


def test_bad_files_give_one_line_naming_them(tmp_path):
    for path, reason in bad_files(tmp_path).values():
        for call in (check_image, read_image):
            with pytest.raises(UserError, match=reason) as info:
                call(path)
            assert str(info.value).startswith(f"cannot read image {path}: ") and "\n" not in str(info.value)


def without_jpeg_ls_decoder(monkeypatch):
    """pydicom as it is when no JPEG-LS decoder is installed (its plugin table says so)."""
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(
        decoder, "_unavailable", {**decoder._unavailable, "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")}
    )


def test_a_missing_decoder_or_pydicom_is_one_line(tmp_path, monkeypatch):
    path = shutil.copy(os.path.join(FILES, "MR_small_jpeg_ls_lossless.dcm"), tmp_path)  # checked nowhere else
    without_jpeg_ls_decoder(monkeypatch)
    for call in (check_image, read_image):
        with pytest.raises(UserError) as info:
            call(path)
        message = str(info.value)
        assert message.startswith(
            f"cannot read image {path}: its transfer syntax JPEG-LS Lossless Image "
            f"Compression ({JPEGLSLossless}) needs a decoder that is not installed ("
        )
        assert "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1" in message and "\n" not in message
        assert message.endswith("): pip install 'medpeft[dicom]'")
    monkeypatch.undo()
    assert np.array_equal(pixels(path), pixels(MR))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # not installed
    with pytest.raises(UserError, match=r"MR_small\.dcm: DICOM files need pydicom: pip install 'medpeft\[dicom\]'"):
        read_image(MR)


def test_check_image_reads_a_file_once_per_version(tmp_path, monkeypatch):
    path = shutil.copy(MR, tmp_path / "a.dcm")
    calls = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    check_image(path)
    check_image(path)
    assert len(calls) == 1
    edited(MR, path, PhotometricInterpretation="HSV")  # a new modification time and size
    os.utime(path, ns=(1, 1))
    with pytest.raises(UserError, match="photometric interpretation 'HSV' is not supported"):
        check_image(path)


def dicom_folder(root):
    """train/val/test folders of two classes: MR_small in its transfer syntaxes, CT_small with noise."""
    rng = np.random.default_rng(0)
    ct = pydicom.dcmread(CT)
    mr = [
        ("train", "MR_small.dcm", "MR_small.dcm"),
        ("train", "MR_small_RLE.dcm", "MR_small_RLE.dcm"),
        ("val", "MR_small_jp2klossless.dcm", "MR_small_jp2klossless.dcm"),
        ("val", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jpeg_ls_lossless.dicom"),
        ("test", "MR_small_implicit.dcm", "scan_0001"),
        ("test", "MR_small_bigendian.dcm", "1.2.840.99.5"),
    ]
    for i, (split, source, target) in enumerate(mr):
        (root / split / "mr").mkdir(parents=True, exist_ok=True)
        (root / split / "ct").mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(FILES, source), root / split / "mr" / target)
        noisy = ct.pixel_array + rng.integers(-50, 50, ct.pixel_array.shape)
        ct.PixelData = noisy.astype(np.int16).tobytes()
        ct.save_as(root / split / "ct" / f"ct{i}.dcm")
    (root / "train" / "mr" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # an index, not an image
    (root / "train" / "mr" / "notes.txt").write_text("not an image")


def test_folder_of_dicoms_trains_end_to_end(tmp_path, capsys):
    root = tmp_path / "scans"
    dicom_folder(root)
    splits = load_folder(root, shots=2)
    assert splits.task.classes == ("ct", "mr") and sorted(splits.train.names) == [
        "train/ct/ct0.dcm",
        "train/ct/ct1.dcm",
        "train/mr/MR_small.dcm",
        "train/mr/MR_small_RLE.dcm",
    ]
    assert splits.val.names[-1] == "val/mr/MR_small_jpeg_ls_lossless.dicom"
    assert splits.test.names[-2:] == ["test/mr/1.2.840.99.5", "test/mr/scan_0001"]
    assert is_image_file(root / "test" / "mr" / "scan_0001") and not is_image_file(root / "train" / "mr" / "DICOMDIR")
    code, out, err = run_cli(
        [
            "train",
            "--task",
            "folder",
            "--data-root",
            str(root),
            "--shots",
            "2",
            "--method",
            "linear",
            *TINY,
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 0, err
    rows = (tmp_path / "run" / "folder_2-shot_submission.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == splits.test.names


def test_csv_of_dicoms_trains_and_predicts(tmp_path, capsys, monkeypatch):
    dicom_folder(tmp_path / "scans")
    files = sorted(p for p in (tmp_path / "scans").rglob("*") if is_image_file(p))
    lines = [f"{p.relative_to(tmp_path)},{p.parent.name},{p.parent.parent.name}" for p in files]
    (tmp_path / "scans.csv").write_text("image,label,split\n" + "\n".join(lines) + "\n")
    assert len(load_csv(tmp_path / "scans.csv").test) == 4
    run = tmp_path / "run"
    code, out, err = run_cli(
        [
            "train",
            "--task",
            "csv",
            "--data-root",
            str(tmp_path / "scans.csv"),
            "--shots",
            "2",
            "--method",
            "linear",
            *TINY,
            "--out",
            str(run),
        ],
        capsys,
    )
    assert code == 0, err
    names = [str(p.relative_to(tmp_path)) for p in files if p.parent.parent.name == "test"]
    (tmp_path / "to_predict.txt").write_text("\n".join(names) + "\n")
    code, out, err = run_cli(["predict", str(run), "--list", str(tmp_path / "to_predict.txt")], capsys)
    assert code == 0, err
    rows = [r.split(",") for r in (run / "to_predict" / "csv_2-shot_submission.csv").read_text().splitlines()]
    assert [r[0] for r in rows] == names
    assert np.allclose([sum(map(float, r[1:])) for r in rows], 1, atol=1e-6)  # softmax over 2 classes
    truncated = os.path.join(FILES, "MR_truncated.dcm")
    (tmp_path / "bad.txt").write_text(f"{names[0]}\n{truncated}\n")
    monkeypatch.setattr("medpeft.experiment.load_run", lambda *a, **k: pytest.fail("got past the image check"))
    code, out, err = run_cli(["predict", str(run), "--list", str(tmp_path / "bad.txt")], capsys)
    assert (
        code == 2
        and err
        == f"medpeft: error: cannot read image {truncated}: The number of bytes of pixel data "
        "is less than expected (8130 vs 8192 bytes) - the dataset may be corrupted, have an "
        "invalid group 0028 element value, or the transfer syntax may be incorrect\n"
    )


@pytest.mark.parametrize("kind", ["truncated", "cut_rle", "no_pixels", "frames", "garbage", "png", "decoder"])
def test_bad_files_stop_the_cli_before_training(tmp_path, capsys, monkeypatch, kind):
    if kind == "decoder":
        bad = shutil.copy(os.path.join(FILES, "MR_small_jpeg_ls_lossless.dcm"), tmp_path)
        without_jpeg_ls_decoder(monkeypatch)
    else:
        bad = bad_files(tmp_path)[kind][0]
    rows = [f"{MR},a,train", f"{CT},b,train", f"{MR},a,val", f"{CT},b,val", f"{bad},a,test"]
    (tmp_path / "data.csv").write_text("image,label,split\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr("medpeft.experiment.build_model", lambda *a, **k: pytest.fail("got past the image check"))
    code, out, err = run_cli(
        [
            "train",
            "--task",
            "csv",
            "--data-root",
            str(tmp_path / "data.csv"),
            "--shots",
            "1",
            "--method",
            "linear",
            *TINY,
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and err.startswith(f"medpeft: error: cannot read image {bad}: ") and err.count("\n") == 1


def test_a_bench_stops_on_a_bad_file_before_its_first_run(tmp_path, capsys, monkeypatch):
    bad = os.path.join(FILES, "SC_rgb_rle_2frame.dcm")
    rows = [f"{MR},a,train", f"{CT},b,train", f"{MR},a,val", f"{bad},b,val", f"{CT},b,test"]
    (tmp_path / "data.csv").write_text("image,label,split\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr("medpeft.experiment.build_model", lambda *a, **k: pytest.fail("got past the image check"))
    code, out, err = run_cli(
        [
            "bench",
            "--methods",
            "linear,lora",
            "--tasks",
            "csv",
            "--data-root",
            str(tmp_path / "data.csv"),
            "--shots",
            "1",
            "--exps",
            "1-2",
            "--backbone",
            "vit_tiny_patch16_224",
            "--no-pretrained",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "bench"),
        ],
        capsys,
    )
    assert (
        code == 2
        and err
        == f"medpeft: error: cannot read image {bad}: a DICOM with 2 frames; medpeft reads "
        "single-frame images (save the frame to classify as its own file)\n"
    )
    assert not (tmp_path / "bench" / "runs").exists()
