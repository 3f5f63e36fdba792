"""The named foundation models (``medpeft models``): every entry builds its real architecture with random weights
and trains one EPT step; a run on a CLIP-layout checkpoint trains, predicts and exports with CLIP's statistics; a
checkpoint of another architecture stops the run before anything is written."""

import json

import numpy as np
import pytest
import timm
import torch
from helpers import run_cli
from PIL import Image

from medpeft import build_model
from medpeft.backbones import build_backbone
from medpeft.data import make_demo_data, read_names
from medpeft.errors import UserError
from medpeft.foundation_models import MODELS, get_foundation_model
from medpeft.preprocessing import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

transformers = pytest.importorskip("transformers", reason="the test extra (transformers) is not installed")


def test_the_registry_lists_at_least_eight_medical_models(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and len(MODELS) >= 8
    for m in MODELS:
        assert f"{m.name}: {m.domain}" in out and f"--backbone {m.name} --weights DIR_OR_FILE" in out
        assert (m.hub_id is None) or f"https://huggingface.co/{m.hub_id}" in out
    assert "gated: accept its terms at https://huggingface.co/MahmoodLab/UNI2-h" in out


@pytest.mark.parametrize("entry", MODELS, ids=[m.name for m in MODELS])
def test_every_entry_builds_its_architecture_and_trains_one_ept_step(entry):
    """The entry's own timm model and arguments with random weights; depth cut to 1 block (ViT-L/H/g would take
    seconds each), everything else as the model's card gives it: width, heads, patch, MLP, registers."""
    kwargs = entry.timm_kwargs()
    with torch.device("meta"):
        full = timm.create_model(entry.timm_name, pretrained=False, num_classes=0, **kwargs)
    patch = full.patch_embed.patch_size[0]
    backbone = timm.create_model(
        entry.timm_name, pretrained=False, num_classes=0, **{**kwargs, "depth": 1, "img_size": 2 * patch}
    )
    assert (
        backbone.embed_dim == full.embed_dim
        and backbone.blocks[0].mlp.fc1.weight.shape == full.blocks[0].mlp.fc1.weight.shape
        and backbone.num_reg_tokens == full.num_reg_tokens
    )
    model = build_model("ept", backbone, 2, seed=0, prompt_length=2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 2 * patch, 2 * patch)), torch.tensor([0, 1]))
    loss.backward()
    torch.optim.SGD(trainable, lr=0.1).step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, trainable))


def test_facts_of_the_registry_entries():
    uni2 = get_foundation_model("uni2-h")
    with torch.device("meta"):
        model = timm.create_model(uni2.timm_name, pretrained=False, num_classes=0, **uni2.timm_kwargs())
    shape = (model.embed_dim, len(model.blocks), model.num_reg_tokens, model.patch_embed.patch_size[0])
    assert shape == (1536, 24, 8, 14)
    assert type(model.blocks[0].mlp).__name__ == "GluMlp"
    assert get_foundation_model("rad-dino").resolution == 518 and get_foundation_model("vit_base_patch16_224") is None


def test_a_named_model_offline_is_one_line(tmp_path):
    """The tests run with the hub switched off: fetching says how to go on instead of a traceback."""
    with pytest.raises(UserError, match="cannot download rad-dino .*pass weights DIR .*, or pretrained=False$"):
        build_backbone("rad-dino")
    with pytest.raises(UserError, match="chexzero is not on the Hugging Face hub"):
        build_backbone("chexzero")


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A transformers CLIP vision tower with CLIP's image processor, as ``save_pretrained`` leaves them."""
    folder = tmp_path_factory.mktemp("clip")
    config = transformers.CLIPVisionConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=16
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def _read_csv(path, classes):
    rows = [line.rsplit(",", classes) for line in path.read_text().splitlines()]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


def test_a_clip_checkpoint_run_trains_predicts_and_exports_with_clip_statistics(tmp_path, capsys, clip_checkpoint):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    root = tmp_path / "data"
    make_demo_data(root)
    run = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--task",
            "endo",
            "--data-root",
            str(root),
            "--shots",
            "1",
            "--weights",
            str(clip_checkpoint),
            "--opt",
            "prompt_length=3",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--val-per-class",
            "2",
            "--test-list",
            "test_WithoutLabel.txt",
            "--out",
            str(run),
        ],
        capsys,
    )
    assert code == 0, err
    recorded = json.loads((run / "run.json").read_text())["model"]["preprocessing"]
    assert recorded["mean"] == pytest.approx(OPENAI_CLIP_MEAN) and recorded["std"] == pytest.approx(OPENAI_CLIP_STD)
    assert recorded["source"].endswith("preprocessor_config.json") and not recorded["overridden"]

    listed = root / "endo" / "test_WithoutLabel.txt"
    assert run_cli(["predict", str(run), "--list", str(listed), "--out", str(tmp_path / "p.csv")], capsys)[0] == 0
    names, predicted = _read_csv(tmp_path / "p.csv", 4)
    from medpeft.experiment import load_run

    model, _ = load_run(run)
    images = [Image.open(root / "endo" / "images" / n).convert("RGB") for n in read_names(listed)]
    pixels = np.stack([np.asarray(im.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255 for im in images])

    def probabilities(mean, std):
        batch = torch.from_numpy(((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
        with torch.no_grad():
            return torch.sigmoid(model(batch)).numpy()  # endo is multi-label

    np.testing.assert_allclose(predicted, probabilities(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), rtol=0, atol=1e-5)
    imagenet = probabilities(IMAGENET_MEAN, IMAGENET_STD)  # what the same assertion would see with ImageNet's
    assert np.abs(predicted - imagenet).max() > 10 * 1e-5

    assert run_cli(["export", str(run)], capsys)[0] == 0
    metadata = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(metadata["mean"]) == pytest.approx(OPENAI_CLIP_MEAN)
    assert json.loads(metadata["std"]) == pytest.approx(OPENAI_CLIP_STD)
    assert (
        run_cli(
            ["predict", str(run), "--list", str(listed), "--engine", "onnx", "--out", str(tmp_path / "o.csv")], capsys
        )[0]
        == 0
    )
    np.testing.assert_allclose(_read_csv(tmp_path / "o.csv", 4)[1], predicted, rtol=0, atol=1e-4)


def test_mean_and_std_overrides_are_recorded(tmp_path, capsys, clip_checkpoint):
    root = tmp_path / "data"
    make_demo_data(root)
    code, _, err = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(root),
            "--shots",
            "1",
            "--weights",
            str(clip_checkpoint),
            "--method",
            "linear",
            "--epochs",
            "1",
            "--val-per-class",
            "2",
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.25",
            "0.25",
            "0.25",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["spec"]["mean"] == [0.5] * 3 and record["spec"]["std"] == [0.25] * 3
    assert record["model"]["preprocessing"]["mean"] == [0.5] * 3 and record["model"]["preprocessing"]["overridden"]


def test_another_architecture_stops_the_run_with_one_line_and_writes_nothing(tmp_path, capsys, clip_checkpoint):
    root = tmp_path / "data"
    make_demo_data(root)
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(root),
            "--shots",
            "1",
            "--backbone",
            "biomedclip",
            "--weights",
            str(clip_checkpoint),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("medpeft: error: weights ")
    assert "embed_dim 64 vs 768" in err and "act quick_gelu vs gelu" in err
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())
