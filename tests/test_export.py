"""ONNX export of trained runs: one graph (the method folded in, the head, softmax or sigmoid, a dynamic batch axis)
whose submission from onnxruntime equals the PyTorch engine's within 1e-4 for every method; the preprocessing in its
metadata, checked against an independent reading of an image; EPT's exportable formulation against Eq. 5; errors."""

import copy
import json
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
from helpers import run_cli
from PIL import Image
from reference import naive_ept_features
from torch import nn

from medpeft import build_model, methods
from medpeft.data import make_demo_data, read_names
from medpeft.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medpeft.experiment import load_run, run_experiment
from medpeft.methods import Method, registry
from medpeft.methods.ept import kernels
from medpeft.model import save_trainable, saved_names
from medpeft.record import RunSpec

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

EPT = {"prompt_length": 5}
CASES = [  # (method, options, task): every EPT way, shallow and unfused too; every other kind of method
    ("ept", EPT, "colon"),
    ("ept", {**EPT, "way": "multiply_concat"}, "endo"),
    ("ept", {**EPT, "way": "add"}, "colon"),
    ("ept", {**EPT, "way": "multiply"}, "endo"),
    ("ept", {**EPT, "layers": [0], "fused": False}, "colon"),
    ("ept", {**EPT, "way": "multiply_concat", "layers": [-1, 2]}, "colon"),
    ("vpt", {"prompt_length": 3}, "endo"),
    ("vpt", {"prompt_length": 3, "deep": False}, "colon"),
    ("lora", {}, "endo"),
    ("adapter", {}, "colon"),
    ("ssf", {}, "endo"),
    ("vp", {"prompt_size": 4}, "colon"),
    ("mlp", {}, "endo"),
    ("peft:lora", {}, "colon"),
    ("peft:ia3", {}, "endo"),
    ("peft:lokr", {}, "colon"),
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "data"
    make_demo_data(root)
    return root


def trained_run(root, out, method, options, task):
    """A run trained one epoch (on timm's smallest ViT: 6 blocks of width 64), whose saved tensors are then moved far
    from their start (LoRA's B, SSF's and IA3's identity, EPT-add's zero prompt …), so that a method missing from
    the graph cannot go unnoticed."""
    spec = RunSpec(
        method=method,
        task=task,
        data_root=str(root),
        shots=1,
        exp=1,
        backbone="test_vit",
        pretrained=False,
        img_size=32,
        options=options,
        val_per_class=2,
        test_list="test_WithoutLabel.txt",
        train={"epochs": 1, "batch_size": 8, "lr": 0.05},
    )
    run_experiment(spec, out, progress=False)
    model, _ = load_run(out)
    names = saved_names(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    save_trainable(model, out / "trainable.safetensors")
    return out


def read_csv(path, classes):
    rows = [line.rsplit(",", classes) for line in path.read_text().splitlines()]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


@pytest.mark.parametrize("method,options,task", CASES, ids=[f"{m}{o}-{t}" for m, o, t in CASES])
def test_onnx_engine_writes_the_torch_engine_submission(demo_root, tmp_path, capsys, method, options, task):
    run = trained_run(demo_root, tmp_path / "run", method, options, task)
    code, stdout, stderr = run_cli(["export", str(run)], capsys)
    assert code == 0, stderr
    assert f"wrote {run / 'model.onnx'}" in stdout
    listed = demo_root / task / "test_WithLabel.txt"
    csv = {}
    for engine in ("torch", "onnx"):  # batches of 32 for a list of 70 or 72: a last batch of another size
        csv[engine] = tmp_path / f"{engine}.csv"
        code, _, stderr = run_cli(
            ["predict", str(run), "--list", str(listed), "--engine", engine, "--out", str(csv[engine])], capsys
        )
        assert code == 0, stderr
    classes = 2 if task == "colon" else 4
    (names, torch_probs), (onnx_names, onnx_probs) = read_csv(csv["torch"], classes), read_csv(csv["onnx"], classes)
    assert names == onnx_names == read_names(listed, task) and torch_probs.shape == (len(names), classes)
    np.testing.assert_allclose(onnx_probs, torch_probs, rtol=0, atol=1e-4)
    assert np.ptp(torch_probs, axis=0).max() > 0.01  # the images are told apart: a real model, not a constant

    graph = onnx.load(str(run / "model.onnx"))
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["img_size"] == "32" and metadata["channel_order"] == "RGB"
    assert json.loads(metadata["mean"]) == list(IMAGENET_MEAN) and json.loads(metadata["std"]) == list(IMAGENET_STD)
    assert metadata["output"] == ("softmax" if task == "colon" else "sigmoid")
    assert metadata["method"] == method and "bicubic" in metadata["resize"]
    (image_input,) = graph.graph.input
    assert image_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    if task == "colon":
        np.testing.assert_allclose(onnx_probs.sum(1), 1, atol=1e-6)


def test_the_metadata_says_how_to_read_an_image(demo_root, tmp_path, capsys):
    """An image read by the metadata alone (PIL bicubic resize, /255, mean and std) gives the submission's row."""
    run = trained_run(demo_root, tmp_path / "run", "ept", EPT, "endo")
    assert run_cli(["export", str(run), "--out", str(tmp_path / "m.onnx")], capsys)[0] == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    size, mean, std = int(metadata["img_size"]), json.loads(metadata["mean"]), json.loads(metadata["std"])
    listed = demo_root / "endo" / "test_WithoutLabel.txt"
    names = read_names(listed)
    pixels = [
        np.asarray(
            Image.open(demo_root / "endo" / "images" / name).convert("RGB").resize((size, size), Image.BICUBIC),
            dtype=np.float32,
        )
        / 255
        for name in names
    ]
    batch = ((np.stack(pixels) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    (probs,) = session.run(None, {session.get_inputs()[0].name: batch})
    out = tmp_path / "torch.csv"
    assert run_cli(["predict", str(run), "--list", str(listed), "--out", str(out)], capsys)[0] == 0
    written, torch_probs = read_csv(out, 4)
    assert written == names
    np.testing.assert_allclose(probs, torch_probs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("way", ["concat", "multiply_concat"])
def test_ept_export_formulation_equals_the_fused_kernel_and_eq5(way, monkeypatch):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).double()
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, 3, way=way, prompt_length=7).double().eval()
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.attn.prompt.add_(torch.randn_like(block.attn.prompt))
    images = torch.randn(3, 3, 64, 64, dtype=torch.double)
    calls, fused_kernel = [], kernels._ScaledFusedAttention.apply
    monkeypatch.setattr(
        kernels._ScaledFusedAttention, "apply", lambda *args: calls.append(args[5]) or fused_kernel(*args)
    )
    fused = model.forward_features(images)
    assert calls == [kernels._CPU_FLASH] * 12  # every block ran the kernel that returns its log-sum-exp
    exported = copy.deepcopy(model)
    exported.method.prepare_export(exported)
    explicit = exported.forward_features(images)
    assert len(calls) == 12  # and none ran it once prepared for export
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-12)
    prompts = {i: b.attn.prompt for i, b in enumerate(model.backbone.blocks)}
    torch.testing.assert_close(explicit, naive_ept_features(reference, prompts, way, images), rtol=0, atol=1e-12)


class SpectralGain(nn.Module):
    """The patch projection of images plus a learned share of their inverse 2-D FFT: no ONNX operator for that."""

    def __init__(self, proj):
        super().__init__()
        self.proj = proj
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.proj(x + self.gain * torch.fft.ifft2(x).real)


@dataclass
class Spectral(Method):
    name = "spectral-test"

    def inject(self, backbone):
        backbone.patch_embed.proj = SpectralGain(backbone.patch_embed.proj)


@pytest.fixture
def spectral():
    methods.register(Spectral)
    yield Spectral.name
    del registry._REGISTRY[Spectral.name]


def test_export_and_onnx_predict_errors_are_one_line(demo_root, tmp_path, capsys, spectral):
    code, _, err = run_cli(["export", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "is not a finished medpeft run directory" in err
    run = trained_run(demo_root, tmp_path / "spectral", spectral, {}, "colon")
    code, _, err = run_cli(["export", str(run)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"method 'spectral-test' of {run} cannot be exported to ONNX" in err and "fft" in err
    assert not (run / "model.onnx").exists()
    listed = str(demo_root / "colon" / "test_WithoutLabel.txt")
    code, _, err = run_cli(["predict", str(run), "--list", listed, "--engine", "onnx"], capsys)
    assert code == 2 and err.count("\n") == 1 and "model.onnx does not exist: write it with `medpeft export" in err
    other = trained_run(demo_root, tmp_path / "other", "linear", {}, "colon")
    assert run_cli(["export", str(other)], capsys)[0] == 0
    code, _, err = run_cli(
        ["predict", str(run), "--list", listed, "--engine", "onnx", "--onnx", str(other / "model.onnx")], capsys
    )
    assert code == 2 and err.count("\n") == 1 and f"was not exported from {run}" in err
    code, _, err = run_cli(["predict", str(other), "--list", listed, "--onnx", str(other / "model.onnx")], capsys)
    assert code == 2 and "--onnx applies to --engine onnx" in err
