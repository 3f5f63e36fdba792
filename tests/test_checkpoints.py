"""Local backbone checkpoints (the path a user's weights take) and small trainable-only checkpoints."""

import os

import pytest
import timm
import torch
from reference import save_google_npz
from safetensors.torch import save_file

import medpeft
from medpeft import UserError, build_model, load_trainable, save_trainable


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()


@pytest.mark.parametrize("fmt", ["pth", "bin", "safetensors", "npz", "wrapped.pth"])
def test_local_weights_load_whatever_the_tag(vit, tmp_path, fmt):
    path = tmp_path / f"backbone.{fmt}"
    state = vit.state_dict()
    if fmt == "npz":
        save_google_npz(vit, path)
    elif fmt == "safetensors":
        save_file(state, path)
    elif fmt == "wrapped.pth":  # a training checkpoint: {"state_dict": ..., "module." prefixes}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save({**state, "head.weight": torch.zeros(1000, 192), "head.bias": torch.zeros(1000)}, path)
    images = torch.randn(2, 3, 224, 224)
    # a tag with custom-load hub weights (timm#2061) must not change how a local file is read
    model = build_model("linear", "vit_tiny_patch16_224.augreg_in21k", 4, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), vit(images), rtol=0, atol=1e-5)


def test_local_weights_resize_to_img_size(vit, tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(vit.state_dict(), path)
    model = build_model("ept", "vit_tiny_patch16_224", 2, weights=path, img_size=96)
    assert model.backbone.pos_embed.shape == (1, 37, 192)
    assert model.backbone.blocks[0].attn.prompt.shape == (37, 100)
    assert torch.equal(model.backbone.cls_token, vit.cls_token)


def test_bad_weights_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_model("linear", "vit_tiny_patch16_224", 2, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file .*junk.pth"):
        build_model("linear", "vit_tiny_patch16_224", 2, weights=tmp_path / "junk.pth")
    torch.save(timm.create_model("vit_small_patch16_224", num_classes=0).state_dict(), tmp_path / "small.pth")
    with pytest.raises(UserError, match="small.pth"):
        build_model("linear", "vit_tiny_patch16_224", 2, weights=tmp_path / "small.pth")


@pytest.mark.parametrize(
    "method,options",
    [
        ("ept", {"prompt_length": 20}),
        ("vpt", {}),
        ("lora", {"r": 2}),
        ("mlp", {}),
        ("peft:lora", {"r": 2}),
        ("ssf", {}),
        ("vp", {"prompt_size": 4}),
        ("ept", {"init": "token"}),
    ],
)
def test_save_trainable_round_trips_exactly(vit, tmp_path, method, options):
    backbone = tmp_path / "backbone.pth"
    torch.save(vit.state_dict(), backbone)
    torch.manual_seed(0)
    model = build_model(method, "vit_tiny_patch16_224", 3, weights=backbone, img_size=64, **options)
    images = torch.randn(2, 3, 64, 64)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(images).sum().backward()
    opt.step()
    model.eval()
    path = tmp_path / "trained.safetensors"
    save_trainable(model, path)
    torch.manual_seed(123)  # a fresh model draws different initial values
    restored = load_trainable(path, weights=backbone).eval()
    assert restored.config == model.config
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
        assert torch.equal(restored(images), restored(images))  # no pending lazy init altered it


def test_ept_checkpoint_is_small():
    model = build_model("ept", "vit_base_patch16_224", 19, pretrained=False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ept.safetensors")
        save_trainable(model, path)
        size = os.path.getsize(path)
    assert size < 4 * (12 * 197 * 100 + 768 * 19 + 19) + 10_000  # float32 prompts + head + header


def test_load_trainable_refuses_another_method(tmp_path):
    model = build_model("vpt", "vit_tiny_patch16_224", 3, pretrained=False, img_size=64)
    save_trainable(model, tmp_path / "vpt.safetensors")
    other = build_model("ept", "vit_tiny_patch16_224", 3, pretrained=False, img_size=64)
    with pytest.raises(UserError, match="holds a 'vpt' model"):
        load_trainable(tmp_path / "vpt.safetensors", other)
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a medpeft trainable-weights file"):
        load_trainable(tmp_path / "x.safetensors", other)


def test_public_api():
    assert {
        "full",
        "linear",
        "partial",
        "mlp",
        "bitfit",
        "lora",
        "adapter",
        "vp",
        "vpt",
        "ept",
        "ssf",
        "peft:lora",
        "peft:dora",
    } <= set(medpeft.available_methods())
