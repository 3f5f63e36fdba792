"""Segmentation as a task kind: dense heads on every family and method, the loss, joint augmentations, the mask
layouts and their samplings, and ``medpeft train`` end to end."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import run_cli
from PIL import Image

from medpeft import UserError, build_model, count_parameters
from medpeft.cli import main
from medpeft.data import load_dataset
from medpeft.data.seg import read_mask, read_volume, to_uint8
from medpeft.evaluate import FeatureCache, predict_logits
from medpeft.experiment import load_run
from medpeft.families import family_of
from medpeft.seg_metrics import segmentation_metrics
from medpeft.task_kinds import get_kind
from medpeft.train import fit

K = 3  # classes
#: tiny random backbones of every family (grid 2×2 or, Swin's last stage, 4×4), with their input size
BACKBONES = {
    "vit": ("vit_tiny_patch16_224", 32, dict(depth=2, embed_dim=48, num_heads=2)),
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", 28, dict(depth=2, embed_dim=48, num_heads=2, init_values=0.5)),
    "swin": ("swin_tiny_patch4_window7_224", 32, dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2))),
    "eva": ("eva02_tiny_patch14_224", 28, dict(depth=2)),
    "beit": ("beit_base_patch16_224", 32, dict(depth=2, embed_dim=48, num_heads=2)),
}
METHODS = [
    ("full", {}),
    ("linear", {}),
    ("partial", {}),
    ("bitfit", {}),
    ("adapter", {"bottleneck": 4}),
    ("lora", {"r": 2}),
    ("ssf", {}),
    ("vp", {"prompt_size": 4}),
    ("vpt", {"prompt_length": 3}),
    ("vpt", {"prompt_length": 3, "deep": False}),
    ("ept", {"prompt_length": 4}),
    ("ept", {"prompt_length": 4, "way": "multiply_concat"}),
    ("ept", {"prompt_length": 4, "way": "add"}),
    ("ept", {"prompt_length": 4, "way": "multiply"}),
    ("ept", {"prompt_length": 4, "fused": False}),
    ("peft:lora", {"r": 2}),
    ("peft:ia3", {}),
]


def head_params(head, D, classes=K, C=256):
    """Parameters of a dense head from its definition (LayerNorm / BatchNorm affine, convolutions)."""
    return {
        "setr-pup": 2 * D + D * C * 9 + 2 * C + 3 * (C * C * 9 + 2 * C) + C * classes + classes,
        "setr-naive": 2 * D + D * C + 2 * C + C * classes + classes,
        "linear": 2 * D + D * classes + classes,
    }[head]


def template(family):
    name, size, kwargs = BACKBONES[family]
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=0, img_size=size, drop_path_rate=0.0, **kwargs).double(), size


def dice_ce(logits, masks):
    """Cross-entropy (mean over pixels) + soft Dice of the softmax against one-hot masks, per image and class
    (MONAI's smoothing 1e-5), averaged."""
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    p = logits.softmax(1)
    inter, total = (p * onehot).sum((2, 3)), p.sum((2, 3)) + onehot.sum((2, 3))
    return F.cross_entropy(logits, masks) + (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()


@pytest.mark.parametrize("family", list(BACKBONES))
def test_every_method_segments_on_every_family(family):
    """Each method with a dense head (the linear one; the SETR heads are counted below): (B, K, S, S) logits, two
    steps of the Dice+CE loss move every trainable tensor and no frozen one, and the trainable count is the head's
    plus the method's own (its classifier's count less the linear classifier)."""
    base, S = template(family)
    D = family_of(base).dense_dim
    loss = get_kind("segmentation").loss(None)
    images = torch.randn(2, 3, S, S, dtype=torch.double)
    masks = torch.randint(0, K, (2, S, S))
    for method, options in METHODS:
        model = build_model(method, copy.deepcopy(base), K, head="linear", seed=0, **options).double()
        classifier = build_model(method, copy.deepcopy(base), K, seed=0, **options)
        own = count_parameters(classifier)[0] - (family_of(classifier.backbone).feature_dim + 1) * K
        assert count_parameters(model)[0] == head_params("linear", D) + own, (family, method, options)
        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):
            out = model(images)
            assert out.shape == (2, K, S, S)
            optimizer.zero_grad()
            loss(out, masks).backward()
            optimizer.step()
        for name, p in model.named_parameters():
            moved = not torch.equal(p, before[name])
            assert moved == (name in trainable), (family, method, options, name)


def test_every_peft_tuner_segments():
    from medpeft.methods.hf_peft import PEFT_TUNERS

    base, S = template("vit")
    loss = get_kind("segmentation").loss(None)
    for tuner in PEFT_TUNERS:
        model = build_model(f"peft:{tuner}", copy.deepcopy(base), K, head="linear", seed=0).double()
        classifier = build_model(f"peft:{tuner}", copy.deepcopy(base), K, seed=0)
        own = count_parameters(classifier)[0] - (48 + 1) * K
        assert count_parameters(model)[0] == head_params("linear", 48) + own > head_params("linear", 48), tuner
        loss(model(torch.randn(2, 3, S, S, dtype=torch.double)), torch.randint(0, K, (2, S, S))).backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), tuner


def test_dense_heads_count_what_they_define():
    base, S = template("vit")
    for head in ("setr-pup", "setr-naive", "linear"):
        model = build_model("linear", copy.deepcopy(base), K, head=head).double()
        assert count_parameters(model)[0] == head_params(head, 48), head
        assert model(torch.randn(1, 3, S, S, dtype=torch.double)).shape == (1, K, S, S)
    with pytest.raises(UserError, match="its own head"):
        build_model("mlp", copy.deepcopy(base), K, head="linear")
    with pytest.raises(UserError, match="unknown head"):
        build_model("linear", copy.deepcopy(base), K, head="fcn")


def test_patch_map_leaves_out_prefix_register_and_prompt_tokens():
    """DINOv2 with 4 registers and 3 deep VPT prompts: the map is the patch tokens of the final norm, in grid order."""
    base, S = template("dinov2-reg")
    model = build_model("vpt", base, K, head="linear", prompt_length=3).double().eval()
    images = torch.randn(2, 3, S, S, dtype=torch.double)
    with torch.no_grad():
        tokens = model.backbone.forward_features(images)
        assert tokens.shape[1] == 1 + 4 + 4  # CLS, registers, 2×2 patches (prompts dropped after the last block)
        expected = tokens[:, 5:].reshape(2, 2, 2, 48).permute(0, 3, 1, 2)
        torch.testing.assert_close(model.forward_features(images), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_fused_ept_is_exact_under_a_dense_head(family):
    base, S = template(family)
    fused = build_model("ept", copy.deepcopy(base), K, head="setr-naive", seed=3, prompt_length=4).double().eval()
    plain = (
        build_model("ept", copy.deepcopy(base), K, head="setr-naive", seed=3, prompt_length=4, fused=False)
        .double()
        .eval()
    )
    images = torch.randn(2, 3, S, S, dtype=torch.double)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), plain(images), rtol=1e-10, atol=1e-10)


def test_dice_ce_loss_is_cross_entropy_plus_soft_dice():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, K, 8, 8, dtype=torch.double), torch.randint(0, K, (2, 8, 8))
    torch.testing.assert_close(get_kind("segmentation").loss(None)(logits, masks), dice_ce(logits, masks))


def test_joint_augmentation_keeps_labels_exact_and_aligned(tmp_path):
    """Mask values stay the original labels (nearest neighbour), and the image moves with its mask: a grey level
    per label is still read back from the transformed image 2 px away from label and image edges."""
    from medpeft.data import Samples
    from medpeft.data.dataset import MaskDataset
    from medpeft.data.tasks import TaskSpec

    task = TaskSpec("t", ("a", "b", "c"), False, kind="segmentation", values=(0, 7, 9))
    mask = np.zeros((48, 64), np.uint8)
    mask[5:30, 8:40], mask[30:45, 20:60] = 7, 9
    grey = np.choose(np.searchsorted([0, 7, 9], mask), [30, 130, 230]).astype(np.uint8)
    data = MaskDataset(Samples(["x"], [np.stack([grey] * 3, -1)], masks=[mask]), 32, task, mean=(0,) * 3, std=(1,) * 3)
    torch.manual_seed(0)
    for _ in range(20):
        image, target, _ = data[0]
        assert target.dtype == torch.int64 and set(target.unique().tolist()) <= {0, 1, 2}
        levels = torch.tensor([30, 130, 230]) / 255
        read = (image[0, :, :, None] - levels).abs().argmin(-1)
        t = target[None].double()
        inner = F.pad(
            ((-F.max_pool2d(-t, 5, 1) == t[..., 2:-2, 2:-2]) & (F.max_pool2d(t, 5, 1) == t[..., 2:-2, 2:-2]))[0],
            (2,) * 4,
        )
        assert inner.sum() > 100 and torch.equal(read[inner], target[inner])


# --- data -----------------------------------------------------------------------------------------------------------


def write_seg_folder(root, n=8, size=32, classes=None, cases=None):
    """``n`` images with square objects; masks 0/255 (or the values of ``classes``: value -> name)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    values = [0, 255] if classes is None else sorted(int(v) for v in classes)
    for i in range(n):
        mask = np.full((size, size), values[0], np.uint8)
        for v in values[1:]:
            y, x = rng.integers(0, size - 10, 2)
            mask[y : y + 10, x : x + 10] = v
        image = (rng.integers(0, 60, (size, size, 3)) + (mask[..., None] > 0) * 150).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))
    if cases is not None:
        (root / "cases.csv").write_text("stem,case\n" + "".join(f"im{i},{cases(i)}\n" for i in range(n)))
    return root


def test_samplings_keep_cases_apart_and_are_seeded(tmp_path):
    root = write_seg_folder(tmp_path / "d", n=24, cases=lambda i: f"c{i // 3}")
    (root / "test.txt").write_text("im0\nim1\nim2\n")
    case = lambda stem: int(stem[2:]) // 3
    data = load_dataset("seg-folder", str(root), 2, 1, seed=0)
    assert data.task.kind == "segmentation" and data.task.values == (0, 255)
    assert data.task.classes == ("background", "foreground")
    train, val, test = ({case(s) for s in part.names} for part in (data.train, data.val, data.test))
    assert sorted(data.test.names) == ["im0", "im1", "im2"]
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(data.train) == 2 and len(train) == 2  # 2 images from 2 distinct cases
    again = load_dataset("seg-folder", str(root), 2, 1, seed=0)
    assert again.train.names == data.train.names and again.val.names == data.val.names
    other = [load_dataset("seg-folder", str(root), 2, e, seed=0).train.names for e in (2, 3, 4)]
    assert any(names != data.train.names for names in other)
    assert read_mask(data.train.masks[0], data.task).max() <= 1


def test_class_map_and_bad_masks_are_one_line_errors(tmp_path):
    root = write_seg_folder(tmp_path / "d", classes={"0": "bg", "3": "gm", "5": "wm"})
    data = load_dataset("seg-folder", str(root), 1, 1)
    assert data.task.classes == ("bg", "gm", "wm") and data.task.values == (0, 3, 5)
    Image.fromarray(np.full((32, 32), 4, np.uint8)).save(root / "masks" / "im3.png")
    with pytest.raises(UserError, match=r"im3\.png holds value 4, outside the class map \[0, 3, 5\]"):
        load_dataset("seg-folder", str(root), 1, 1)
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "masks" / "im3.png")
    with pytest.raises(UserError, match=r"im3\.png is 32x30 but its image .*im3\.png is 32x32"):
        load_dataset("seg-folder", str(root), 1, 1)
    (root / "masks" / "im3.png").unlink()
    with pytest.raises(UserError, match=r"im3\.png has no mask"):
        load_dataset("seg-folder", str(root), 1, 1)


def test_kvasir_and_isic2018_layouts(tmp_path):
    kvasir = write_seg_folder(tmp_path / "kvasir", n=6)
    for path in (kvasir / "masks").iterdir():  # Kvasir-SEG ships JPEG masks
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=70)
        path.unlink()
    (tmp_path / "test.lst").write_text("im4.jpg\nim5.jpg\n")
    data = load_dataset("kvasir-seg", str(kvasir), 1, 1, test_list=str(tmp_path / "test.lst"))
    assert data.task.values == (0, 255) and sorted(data.test.names) == ["im4", "im5"]
    isic = tmp_path / "isic"
    for split in ("Training", "Validation"):
        (isic / f"ISIC2018_Task1-2_{split}_Input").mkdir(parents=True)
        (isic / f"ISIC2018_Task1_{split}_GroundTruth").mkdir()
        for i in range(3):
            stem = f"ISIC_{split[0]}{i}"
            Image.new("RGB", (20, 16)).save(isic / f"ISIC2018_Task1-2_{split}_Input" / f"{stem}.jpg")
            mask = np.zeros((16, 20), np.uint8)
            mask[4:10, 5:12] = 255
            Image.fromarray(mask).save(isic / f"ISIC2018_Task1_{split}_GroundTruth" / f"{stem}_segmentation.png")
    data = load_dataset("isic2018-seg", str(isic), 2, 1)
    assert sorted(data.val.names) == ["ISIC_V0", "ISIC_V1", "ISIC_V2"]
    assert len(data.train) == 2 and set(data.train.names) <= {"ISIC_T0", "ISIC_T1", "ISIC_T2"}
    pairs = write_seg_folder(tmp_path / "pairs", n=6, classes={"0": "bg", "1": "lesion", "2": "rim"})
    rows = [f"images/im{i}.png,masks/im{i}.png,{'test' if i < 2 else 'train'},c{i // 2}" for i in range(6)]
    (pairs / "pairs.csv").write_text("image,mask,split,case\n" + "\n".join(rows) + "\n")
    data = load_dataset("seg-csv", str(pairs / "pairs.csv"), 1, 1)
    assert data.task.classes == ("bg", "lesion", "rim") and sorted(data.test.names) == [
        "images/im0.png",
        "images/im1.png",
    ]
    case = lambda name: int(Path(name).stem[2:]) // 2
    assert {case(n) for n in data.train.names}.isdisjoint(case(n) for n in data.val.names)


# --- end to end -----------------------------------------------------------------------------------------------------


def train_args(root):
    args = ["train", "--task", "seg-folder", "--data-root", str(root), "--shots", "2", "--method", "ept"]
    args += ["--opt", "prompt_length=4", "--head", "setr-pup", "--backbone", "vit_tiny_patch16_224"]
    return args + ["--no-pretrained", "--img-size", "32", "--epochs", "1", "--lr", "0.05", "--calibrate", "temperature"]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """``medpeft train --task seg-folder --method ept --head setr-pup`` on 8 PNG images: (data root, run dir)."""
    tmp = tmp_path_factory.mktemp("segrun")
    root = write_seg_folder(tmp / "d", n=8)
    main([*train_args(root), "--out", str(tmp / "run")])  # an error exits
    return root, tmp / "run"


def test_train_writes_segmentation_metrics(seg_run):
    root, out = seg_run
    record = json.loads((out / "run.json").read_text())
    test = record["result"]["test_metrics"]
    assert {"mIoU", "mDice", "IoU/background", "IoU/foreground", "HD95", "ECE"} <= set(test)
    assert record["task"]["kind"] == "segmentation" and record["model"]["head"] == "setr-pup"
    assert record["result"]["calibration"]["test"]["mIoU"] == test["mIoU"]
    assert record["result"]["trainable_params"] == head_params("setr-pup", 192, 2) + 12 * (1 + 4) * 4  # EPT rows
    # the recorded metrics are those of the saved model, recomputed independently at each mask's size
    model, loaded = load_run(out)
    data = load_dataset("seg-folder", str(root), 2, 1)
    assert loaded.split["train"] == data.train.names
    logits = torch.from_numpy(predict_logits(model, data.test, data.task, img_size=32))
    preds = [logit.argmax(0).numpy() for logit in logits]  # masks are 32×32: no resize
    truths = [read_mask(m, data.task) for m in data.test.masks]
    expected = segmentation_metrics(preds, truths, 2, probs=list(logits.double().softmax(1).numpy()))
    assert test["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-9)
    assert test["HD95"] == pytest.approx(expected["HD95"], nan_ok=True)


def test_a_bad_mask_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    root = write_seg_folder(tmp_path / "d", n=4)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / "im1.png")
    code, _, stderr = run_cli([*train_args(root), "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "im1.png holds value 7" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_predict_writes_label_masks_and_overlays(seg_run, tmp_path, capsys):
    root, out = seg_run
    (tmp_path / "list.txt").write_text("".join(f"{root}/images/im{i}.png\n" for i in (0, 5)))
    code, stdout, stderr = run_cli(["predict", str(out), "--list", str(tmp_path / "list.txt")], capsys)
    assert code == 0, stderr
    model, record = load_run(out)
    for i in (0, 5):
        mask = np.asarray(Image.open(out / "list" / "masks" / f"im{i}.png"))
        image = np.asarray(Image.open(root / "images" / f"im{i}.png"))
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(Image.open(root / "images" / f"im{i}.png"), np.float32) / 255)
            x = (x - torch.tensor(model.preprocessing.mean)) / torch.tensor(model.preprocessing.std)
            labels = model(x.permute(2, 0, 1)[None])[0].argmax(0).numpy()  # 32×32 images: no resize
        assert mask.dtype == np.uint8 and np.array_equal(mask, np.array([0, 255])[labels])
        painted = np.asarray(Image.open(out / "list" / "overlays" / f"im{i}.png"))
        assert painted.shape == image.shape and np.array_equal(painted[labels == 0], image[labels == 0])


def test_predict_on_volumes_writes_label_volumes_like_their_inputs(tmp_path, capsys):
    """A seg-volumes run predicts a NIfTI and an NRRD volume: a label volume of the input's format, shape and
    geometry whose every slice is what the 2-D path predicts for that slice written as a PNG."""
    import nibabel
    import SimpleITK as sitk

    root = write_volumes(tmp_path / "v")
    args = ["train", "--task", "seg-volumes", "--data-root", str(root), "--axis", "2", "--shots", "2"]
    args += ["--method", "linear", "--head", "linear", "--backbone", "vit_tiny_patch16_224", "--no-pretrained"]
    code, _, stderr = run_cli([*args, "--img-size", "32", "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, stderr
    sources = [root / "images" / "case0.nii.gz", root / "images" / "case3.nrrd"]
    (tmp_path / "volumes.txt").write_text("".join(f"{p}\n" for p in sources))
    code, stdout, stderr = run_cli(["predict", str(tmp_path / "run"), "--list", str(tmp_path / "volumes.txt")], capsys)
    assert code == 0, stderr
    masks, png = tmp_path / "run" / "volumes" / "masks", tmp_path / "png"
    png.mkdir()
    volumes = [read_volume(p) for p in sources]
    slices = [f"{p.name.split('.')[0]}_{i}" for p in sources for i in range(6)]
    for p, volume in zip(sources, volumes):
        scaled = to_uint8(volume)
        for i in range(6):
            Image.fromarray(scaled[:, :, i]).save(png / f"{p.name.split('.')[0]}_{i}.png")
    (tmp_path / "slices.txt").write_text("".join(f"{png / s}.png\n" for s in slices))
    code, _, stderr = run_cli(["predict", str(tmp_path / "run"), "--list", str(tmp_path / "slices.txt")], capsys)
    assert code == 0, stderr
    reference = nibabel.load(str(sources[0]))
    written = nibabel.load(str(masks / "case0.nii.gz"))
    assert written.shape == reference.shape and np.array_equal(written.affine, reference.affine)
    itk, itk_reference = sitk.ReadImage(str(masks / "case3.nrrd")), sitk.ReadImage(str(sources[1]))
    assert itk.GetSpacing() == itk_reference.GetSpacing() and itk.GetOrigin() == itk_reference.GetOrigin()
    for case, label in (("case0", np.asarray(written.dataobj)), ("case3", read_volume(masks / "case3.nrrd"))):
        assert label.shape == (12, 10, 6) and set(np.unique(label)) == {0, 1}  # both classes predicted
        for i in range(6):
            expected = np.asarray(Image.open(tmp_path / "run" / "slices" / "masks" / f"{case}_{i}.png"))
            assert np.array_equal(label[:, :, i], expected), (case, i)
            overlay = tmp_path / "run" / "volumes" / "overlays" / case / f"2-{i:04d}.png"
            assert overlay.is_file() == bool(expected.any())
    (tmp_path / "twice.txt").write_text(f"{sources[0]}\n{sources[0]}\n")
    code, _, stderr = run_cli(["predict", str(tmp_path / "run"), "--list", str(tmp_path / "twice.txt")], capsys)
    assert code == 2 and "names two volumes of one case name" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "twice").exists()


def test_export_gives_per_pixel_logits(seg_run, tmp_path, capsys):
    import onnxruntime as ort

    root, out = seg_run
    code, _, stderr = run_cli(["export", str(out), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 0, stderr
    model, _ = load_run(out)
    images = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"image": images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(images).numpy(), rtol=0, atol=1e-4)
    assert json.loads(session.get_modelmeta().custom_metadata_map["values"]) == [0, 255]


def test_bench_selects_on_validation_miou(tmp_path, capsys):
    import yaml

    root = write_seg_folder(tmp_path / "d", n=8)
    config = {
        "methods": [{"method": "ept", "options": {"prompt_length": 2}, "search": {"lr": [0.01, 0.1]}}, "linear"],
        "tasks": ["seg-folder"],
        "data_root": str(root),
        "shots": [1],
        "exps": [1],
        "backbone": "vit_tiny_patch16_224",
        "pretrained": False,
        "img_size": 32,
        "head": "linear",
        "train": {"epochs": 1},
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    code, _, stderr = run_cli(["bench", "--config", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "b")], capsys)
    assert code == 0, stderr
    lines = [json.loads(line) for line in (tmp_path / "b" / "runs.jsonl").read_text().splitlines()]
    runs = list({r["key"]: r for r in lines}.values())  # the last line of a run is its current record
    ept = [r for r in runs if r["spec"]["method"] == "ept"]
    chosen = max(ept, key=lambda r: (r["result"]["val_best"], -r["spec"]["candidate"]["lr"]))
    assert [r["selected"] for r in ept] == [r is chosen for r in ept]
    assert all(r["result"]["val_best"] == r["result"]["history"][0]["val_mIoU"] for r in runs)
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "seg-folder 1-shot (mIoU)" in summary and "HD95: in pixels, not ×100." in summary


def write_volumes(root, shape=(12, 10, 6)):
    """Four cases of random volumes with a labelled box (three NIfTI with a scaled affine, one NRRD with spacing
    and origin); case0 is the test case."""
    import nibabel
    import SimpleITK as sitk

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10, 4, 7]
    for c in range(4):
        image = rng.normal(size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[2:6, 3:7, 1 : 3 + c % 2] = 1  # slices 1, 2 (and 3) along axis 2 are labelled
        image[label == 1] += 3
        if c < 3:
            nibabel.save(nibabel.Nifti1Image(image, affine), root / "images" / f"case{c}.nii.gz")
            nibabel.save(nibabel.Nifti1Image(label, affine), root / "labels" / f"case{c}.nii.gz")
        else:  # ITK arrays are (k, j, i)
            for array, folder in ((image, "images"), (label, "labels")):
                volume = sitk.GetImageFromArray(array.transpose())
                volume.SetSpacing((0.5, 0.6, 3.0))
                volume.SetOrigin((1.0, -2.0, 30.0))
                sitk.WriteImage(volume, root / folder / "case3.nrrd")
    (root / "test.txt").write_text("case0\n")
    return root


def test_volumes_are_sliced_along_the_stated_axis_with_cases_apart(tmp_path):
    write_volumes(tmp_path / "v")
    data = load_dataset("seg-volumes", str(tmp_path / "v"), 2, 1, axis=2)
    assert sorted(data.test.names) == ["case0/2-0001", "case0/2-0002"]
    assert data.test.sources[0].shape == (12, 10) and data.test.masks[0].shape == (12, 10)
    cases = [{n.split("/")[0] for n in part.names} for part in (data.train, data.val, data.test)]
    assert len(data.train) == 2 and len(cases[0]) == 2 and not (cases[0] & cases[1]) and not (cases[1] & cases[2])
    assert all(read_mask(m, data.task).any() for m in data.train.masks)
    everything = load_dataset("seg-volumes", str(tmp_path / "v"), 1, 1, axis=0)
    assert all(n.split("/")[1].startswith("0-") for n in everything.test.names)
    with pytest.raises(UserError, match="axis applies to volumes"):
        load_dataset("seg-folder", str(tmp_path / "v"), 1, 1, axis=2)


def test_feature_cache_gives_the_same_dense_logits(tmp_path):
    root = write_seg_folder(tmp_path / "d", n=6)
    data = load_dataset("seg-folder", str(root), 1, 1)
    for method in ("linear", "partial"):
        model = build_model(method, "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, head="linear", seed=0)
        plain = predict_logits(model, data.val, data.task, img_size=32)
        cached = predict_logits(model, data.val, data.task, img_size=32, features=FeatureCache())
        assert plain.shape == (len(data.val), 2, 32, 32) and np.array_equal(plain, cached), method
    classifier = build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32)
    with pytest.raises(UserError, match="a classifier head; task .* is a segmentation task"):
        fit(classifier, data)


def test_unet_baseline_trains_from_scratch_through_the_same_pipeline(tmp_path, capsys):
    import segmentation_models_pytorch as smp

    root = write_seg_folder(tmp_path / "d", n=8, size=64)
    args = ["train", "--task", "seg-folder", "--data-root", str(root), "--shots", "2", "--method", "unet"]
    args += ["--opt", "encoder=resnet18", "--img-size", "64", "--epochs", "1", "--batch-size", "2"]
    code, _, stderr = run_cli([*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    unet = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=2)
    assert record["result"]["trainable_params"] == sum(p.numel() for p in unet.parameters())
    assert {"mIoU", "mDice", "HD95", "ECE"} <= set(record["result"]["test_metrics"])
    model, _ = load_run(tmp_path / "run")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    with pytest.raises(UserError, match="segmentation tasks only"):
        build_model("unet", num_classes=2)
    for size in ("48", "32"):  # not a multiple of 32; a 1 × 1 bottleneck (batch norm fails on a batch of one)
        args[args.index("--img-size") + 1] = size
        code, _, stderr = run_cli([*args, "--out", str(tmp_path / size)], capsys)
        assert code == 2 and f"--img-size {size}: method 'unet' needs a multiple of 32, at least 64" in stderr
        assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / size).exists()


def test_real_mask_sets_need_no_data_root(tmp_path, monkeypatch):
    from medpeft.data import get_dataset
    from medpeft.data.seg_real import test_stems

    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path))
    dataset = get_dataset("stardist-nuclei")
    data = load_dataset("stardist-nuclei", dataset.root(None), 2, 1)
    assert data.task.classes == ("background", "nucleus") and data.task.values == (0, 1)
    assert sorted(data.test.names) == sorted(test_stems("stardist-nuclei"))
    assert not set(data.train.names) & set(data.val.names) and len(data.train) == 2


def test_mlflow_logs_the_segmentation_metrics_of_the_record(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: no database to migrate (seconds) here

    root = write_seg_folder(tmp_path / "d", n=6)
    uri = (tmp_path / "mlruns").as_uri()
    code, _, stderr = run_cli([*train_args(root), "--out", str(tmp_path / "run"), "--mlflow", uri], capsys)
    assert code == 0, stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = run.data.metrics
    test = {k: v for k, v in record["result"]["test_metrics"].items() if not np.isnan(v)}
    assert {f"test_{k}": logged[f"test_{k}"] for k in test} == {f"test_{k}": v for k, v in test.items()}
    assert run.data.params["head"] == "setr-pup" and logged["trainable_params"] == record["result"]["trainable_params"]
