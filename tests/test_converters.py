"""Foundation-model checkpoints in their own formats: each reference library (transformers, open_clip) builds a small
model with random weights and saves it as it saves its models; loaded through ``--weights``, the timm features equal
the library's own output (≤ 1e-5 relative, float32). MAE's layout against a naive forward written here. A
checkpoint of another architecture than the named one is one line that says what differs."""

import importlib
import json

import pytest
import torch
import torch.nn.functional as F

from medpeft.backbones import AUTO, build_backbone
from medpeft.errors import UserError
from medpeft.preprocessing import IMAGENET_MEAN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

transformers = pytest.importorskip("transformers", reason="the test extra (transformers) is not installed")
open_clip = pytest.importorskip("open_clip", reason="the test extra (open_clip_torch) is not installed")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def _perturbed(model):
    """Every tensor moved from its init (LayerNorms off 1 and 0, biases off 0), so a swapped tensor shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _features(model, x):
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(x), pre_logits=True)


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


HF_CASES = {
    "dinov2": lambda t: t.Dinov2Model(t.Dinov2Config(**SMALL, image_size=28, patch_size=14, layerscale_value=0.5)),
    "dinov2-registers": lambda t: t.Dinov2WithRegistersModel(
        t.Dinov2WithRegistersConfig(**SMALL, image_size=28, patch_size=14, num_register_tokens=4)
    ),
    "dinov2-swiglu": lambda t: t.Dinov2Model(
        t.Dinov2Config(**SMALL, image_size=28, patch_size=14, use_swiglu_ffn=True)
    ),
    "vit": lambda t: t.ViTModel(
        t.ViTConfig(**SMALL, intermediate_size=128, image_size=32, patch_size=16), add_pooling_layer=False
    ),
    "clip": lambda t: t.CLIPVisionModel(
        t.CLIPVisionConfig(**SMALL, intermediate_size=128, image_size=32, patch_size=16)
    ),
    "siglip": lambda t: t.SiglipVisionModel(
        t.SiglipVisionConfig(**SMALL, intermediate_size=128, image_size=32, patch_size=16)
    ),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_checkpoints_give_the_reference_features(tmp_path, case):
    torch.manual_seed(0)
    reference = _perturbed(HF_CASES[case](transformers))
    reference.save_pretrained(tmp_path)
    size = reference.config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = reference(pixel_values=x)
    expected = out.last_hidden_state[:, 0] if case == "vit" else out.pooler_output  # CLS after the final norm, or
    model, preprocessing = build_backbone(AUTO, weights=tmp_path)  # SigLIP's attention pool
    assert _relative(_features(model, x), expected) <= 1e-5
    assert model.num_reg_tokens == (4 if case == "dinov2-registers" else 0)
    assert preprocessing.img_size == size


def _open_clip_model(vision, quick_gelu=False):
    cfg = dict(
        embed_dim=32,
        vision_cfg=vision,
        quick_gelu=quick_gelu,
        text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1),
    )
    model = open_clip.model.CLIP(**cfg)
    model.visual.image_mean, model.visual.image_std = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)  # as create_model sets them
    return _perturbed(model), cfg


def _save_open_clip(model, cfg, folder):
    """What open_clip puts on the hub: its state dict and ``open_clip_config.json`` (with the preprocessing)."""
    folder.mkdir(exist_ok=True)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    importlib.import_module("open_clip.push_to_hf_hub").save_config_for_hf(
        model, folder / "open_clip_config.json", model_config=cfg
    )


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_openai_layout_gives_the_reference_features(tmp_path, quick_gelu):
    torch.manual_seed(0)
    model, cfg = _open_clip_model(dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32), quick_gelu)
    _save_open_clip(model, cfg, tmp_path / "oc")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.visual.proj = None  # the pooled feature before CLIP's projection: what a classifier head reads
    with torch.no_grad():
        expected = model.visual(x)
    timm_model, preprocessing = build_backbone(AUTO, weights=tmp_path / "oc")
    assert _relative(_features(timm_model, x), expected) <= 1e-5
    assert preprocessing.mean == (0.25, 0.5, 0.75) and preprocessing.std == (0.2, 0.3, 0.4)
    # the bare state dict says no activation: the named backbone does, and its shapes are checked against it
    name = "vit_base_patch16_clip_quickgelu_224" if quick_gelu else "vit_base_patch16_clip_224"
    with pytest.raises(UserError, match=r"embed_dim 64 vs 768; depth 2 vs 12"):
        build_backbone(name, weights=tmp_path / "oc" / "open_clip_pytorch_model.bin")


def test_open_clip_timm_trunk_gives_the_reference_features(tmp_path):
    torch.manual_seed(0)
    model, cfg = _open_clip_model(
        dict(image_size=224, timm_model_name="test_vit", timm_model_pretrained=False, timm_pool="", timm_proj="linear")
    )
    _save_open_clip(model, cfg, tmp_path / "oc")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.visual.trunk(x)
    timm_model, _ = build_backbone(AUTO, weights=tmp_path / "oc")
    assert _relative(_features(timm_model, x), expected) <= 1e-5
    # BiomedCLIP's way: the trunk's weights, named by the registry entry's timm model
    assert (
        json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"][
            "timm_model_name"
        ]
        == "test_vit"
    )


def _naive_mae_features(state, x, heads, patch):
    """MAE's fine-tuning encoder (models_vit, global_pool): patches, CLS + position, pre-norm blocks, the mean of
    the patch tokens, ``fc_norm``; written from MAE's code, not timm's."""
    ln = lambda t, k: F.layer_norm(t, t.shape[-1:], state[f"{k}.weight"], state[f"{k}.bias"], 1e-6)  # noqa: E731
    lin = lambda t, k: F.linear(t, state[f"{k}.weight"], state[f"{k}.bias"])  # noqa: E731
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([state["cls_token"].expand(len(x), -1, -1), tokens], 1) + state["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}"
        B, N, D = tokens.shape
        qkv = lin(ln(tokens, f"{b}.norm1"), f"{b}.attn.qkv").reshape(B, N, 3, heads, D // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) / (D // heads) ** 0.5).softmax(-1)
        tokens = tokens + lin((attn @ v).transpose(1, 2).reshape(B, N, D), f"{b}.attn.proj")
        tokens = tokens + lin(F.gelu(lin(ln(tokens, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    return ln(tokens[:, 1:].mean(1), "fc_norm")


def test_mae_checkpoint_gives_the_naive_features(tmp_path):
    """RETFound/MAE's layout: a ``model`` dict with the encoder (``fc_norm``, no ``norm``), the decoder and its mask
    token, saved with training state beside it."""
    import timm

    torch.manual_seed(0)
    source = _perturbed(timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, global_pool="avg"))
    encoder = {k: v.clone() for k, v in source.state_dict().items()}
    assert "fc_norm.weight" in encoder and "norm.weight" not in encoder
    decoder = {
        "mask_token": torch.randn(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, 64),
        "decoder_blocks.0.norm1.weight": torch.randn(32),
        "decoder_pred.weight": torch.randn(768, 32),
    }
    torch.save({"model": {**encoder, **decoder}, "epoch": 799}, tmp_path / "RETFound_like.pth")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _naive_mae_features(encoder, x, heads=2, patch=16)
    model, _ = build_backbone("test_vit", weights=tmp_path / "RETFound_like.pth")
    assert model.global_pool == "avg" and tuple(model.patch_embed.img_size) == (32, 32)
    assert _relative(_features(model, x), expected) <= 1e-5


def _dinov2_original(hf_state, depth):
    """The HF Dinov2 tensors under DINOv2's own names (facebookresearch/dinov2's ``DinoVisionTransformer``)."""
    e, out = "embeddings.", {}
    out.update(
        cls_token=hf_state[e + "cls_token"],
        pos_embed=hf_state[e + "position_embeddings"],
        register_tokens=hf_state[e + "register_tokens"],
        mask_token=hf_state[e + "mask_token"],
        **{f"patch_embed.proj.{p}": hf_state[f"{e}patch_embeddings.projection.{p}"] for p in ("weight", "bias")},
        **{f"norm.{p}": hf_state[f"layernorm.{p}"] for p in ("weight", "bias")},
    )
    for i in range(depth):
        h, o = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{o}attn.qkv.{p}"] = torch.cat(
                [hf_state[f"{h}attention.attention.{n}.{p}"] for n in ("query", "key", "value")]
            )
            for mine, theirs in (
                ("attn.proj", "attention.output.dense"),
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                out[f"{o}{mine}.{p}"] = hf_state[f"{h}{theirs}.{p}"]
        out[f"{o}ls1.gamma"], out[f"{o}ls2.gamma"] = (hf_state[f"{h}layer_scale{j}.lambda1"] for j in (1, 2))
    return out


def test_dinov2_original_layout_gives_the_reference_features(tmp_path):
    """DINOv2's own layout (``register_tokens``, ``mask_token``) through timm's ``_convert_dinov2``, into a model
    of that architecture (its heads are not in the shapes)."""
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(0)
    reference = _perturbed(HF_CASES["dinov2-registers"](transformers))
    reference.save_pretrained(tmp_path / "hf")
    original = _dinov2_original(load_file(tmp_path / "hf" / "model.safetensors"), 2)
    torch.save(original, tmp_path / "dinov2_vits14_reg.pth")
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=x).pooler_output
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2",
        pretrained=False,
        num_classes=0,
        embed_dim=64,
        depth=2,
        num_heads=2,
        img_size=28,
    )
    model, _ = build_backbone(model, weights=tmp_path / "dinov2_vits14_reg.pth")
    assert _relative(_features(model, x), expected) <= 1e-5


def test_another_architecture_is_one_line_naming_what_differs(tmp_path):
    reference = _perturbed(HF_CASES["dinov2"](transformers))
    reference.save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        build_backbone("vit_small_patch14_dinov2", weights=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "embed_dim 64 vs 384" in message and "depth 2 vs 12" in message
    assert "num_heads 2 vs 6" in message and "(transformers dinov2)" in message
    with pytest.raises(UserError, match="patch_size 14 vs 16"):
        build_backbone("vit_tiny_patch16_224", weights=tmp_path)


def test_preprocessing_comes_from_the_checkpoint(tmp_path):
    reference = _perturbed(HF_CASES["clip"](transformers))
    reference.save_pretrained(tmp_path)
    _, without = build_backbone(AUTO, weights=tmp_path)  # no processor config: the timm CLIP tag's statistics
    assert without.mean == pytest.approx(OPENAI_CLIP_MEAN) and "pretrained_cfg" in without.source
    transformers.ViTImageProcessor(
        image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], size={"height": 32, "width": 32}, resample=2
    ).save_pretrained(tmp_path)
    _, stated = build_backbone(AUTO, weights=tmp_path)
    assert stated.mean == (0.1, 0.2, 0.3) and stated.std == (0.4, 0.5, 0.6)
    assert stated.interpolation == "bilinear" and stated.source.endswith("preprocessor_config.json")
    overridden = stated.override(mean=[0.5, 0.5, 0.5])
    assert overridden.mean == (0.5,) * 3 and overridden.std == stated.std and overridden.overridden
    _, random_init = build_backbone("test_vit", pretrained=False)
    assert random_init.mean == IMAGENET_MEAN and random_init.std != OPENAI_CLIP_STD


def test_timm_hub_folder_gives_the_reference_features(tmp_path):
    """A folder timm's own ``save_for_hf`` writes (as UNI and Virchow are published): ``config.json`` with the
    architecture, its arguments and ``pretrained_cfg``; the normalisation comes from the latter."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = _perturbed(
        timm.create_model(
            "test_vit",
            pretrained=False,
            num_classes=0,
            img_size=32,
            reg_tokens=2,
            no_embed_class=True,
            init_values=1e-5,
        )
    )
    save_for_hf(reference, str(tmp_path), data_config={"mean": (0.7, 0.6, 0.5), "std": (0.2, 0.25, 0.3)})
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "test_vit"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model, preprocessing = build_backbone(AUTO, weights=tmp_path)
    assert _relative(_features(model, x), _features(reference, x)) <= 1e-5 and model.num_reg_tokens == 2
    assert preprocessing.mean == (0.7, 0.6, 0.5) and preprocessing.std == (0.2, 0.25, 0.3)


def test_the_feature_cache_key_holds_the_normalisation():
    import numpy as np

    from medpeft import build_model
    from medpeft.data import TASKS, Samples  # noqa: F401
    from medpeft.evaluate import FeatureCache

    samples = Samples(["a"], [np.zeros((8, 8, 3), np.uint8)], np.array([0]))
    keys = set()
    for mean in (None, [0.5, 0.5, 0.5]):
        model = build_model("linear", "test_vit", 2, pretrained=False, img_size=32, seed=0, mean=mean)
        keys.add(
            FeatureCache().key(model, 7, samples, img_size=32, batch_size=4, device=torch.device("cpu"), bf16=False)
        )
    assert len(keys) == 2


def test_a_folder_without_config_names_the_parameter_the_cli_names_by_its_flag(tmp_path):
    from medpeft.cli.options import flag_namer
    from medpeft.cli.train import train
    from medpeft.errors import ParameterError

    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ParameterError) as err:
        build_backbone("vit_tiny_patch16_224", weights=tmp_path)
    assert str(err.value).endswith("the weight file (model.safetensors) itself, with backbone naming its architecture")
    assert err.value.named(flag_namer(train)).endswith("with --backbone naming its architecture")
    # a boolean flag set to a value is named by the flag that sets it
    assert flag_namer(train)("pretrained=False") == "--no-pretrained" and flag_namer(train)("epochs") == "--epochs"
