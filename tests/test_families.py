"""Every backbone family through one suite: which family serves a model, and each family's models under every
method (trainable counts from the definitions, EPT and VPT against naive references, training, checkpoints,
gradient checkpointing, the evaluation cache, ``medpeft train``). What one family alone has is tested in
``test_eva.py``, ``test_swin.py`` and ``test_dinov2.py``; ``family_models.py`` builds the models and counts."""

import copy
import json
import random

import pytest
import timm
import torch
import torch.nn.functional as F
from family_models import (
    BEIT,
    BEIT_CASES,
    BEIT_SMALL,
    DINOV2,
    DINOV2_CASES,
    EVA,
    EVA_CASES,
    REG4,
    REGS,
    SWIN,
    SWIN_CASES,
    SWIN_SMALL,
    TRAINED,
    C,
    beit,
    dinov2,
    eva,
    expected_beit,
    expected_eva,
    expected_swin,
    swin,
)
from reference import (
    naive_ept_beit_features,
    naive_ept_eva_features,
    naive_ept_features,
    naive_ept_swin_features,
    naive_vpt_beit_features,
    naive_vpt_eva_features,
)
from test_methods import expected_trainable
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from medpeft import UserError, build_model, count_parameters, load_trainable, save_trainable
from medpeft.data import make_demo_data
from medpeft.evaluate import forward_prefix, forward_suffix
from medpeft.families import base, family_of
from medpeft.families.beit import BeitFamily
from medpeft.families.eva import EvaFamily
from medpeft.families.swin import SwinFamily
from medpeft.families.vit import ViTFamily
from medpeft.methods.hf_peft import PEFT_TUNERS

D = torch.double


# --- which family serves a model ----------------------------------------------------------------------------------
FAMILIES = {VisionTransformer: ViTFamily, SwinTransformer: SwinFamily, Eva: EvaFamily, Beit: BeitFamily}


def bare(cls):
    """An instance of ``cls`` without building it (the lookup reads the class only)."""
    return cls.__new__(cls)


class MyEva(Eva):
    pass


class MyEvaFamily(EvaFamily):
    model_class = MyEva


@pytest.mark.parametrize("seed", range(4))
def test_lookup_does_not_depend_on_the_order_of_registration(seed, monkeypatch):
    """Exact class first, else the nearest registered base class in the MRO, in any registration order."""
    families = [*FAMILIES.values(), MyEvaFamily]
    random.Random(seed).shuffle(families)
    monkeypatch.setattr(base, "_FAMILIES", {})
    for family in families:
        base.register(family)
    for model_class, family in FAMILIES.items():
        assert base.family_class(bare(model_class)) is family
    assert base.family_class(bare(MyEva)) is MyEvaFamily  # its own family, though an Eva
    assert base.family_class(bare(VisionTransformerDistilled)) is ViTFamily  # a VisionTransformer subclass
    with pytest.raises(ValueError, match="Eva already has the family EvaFamily"):
        base.register(type("Other", (EvaFamily,), {}))


def test_another_model_is_refused_naming_the_families_by_name():
    class Thing(base.nn.Module):
        pass

    with pytest.raises(UserError) as err:
        base.family_class(Thing(), "thing")
    assert str(err.value) == (
        "backbone 'thing' is a Thing, not a timm Beit, Eva, SwinTransformer or VisionTransformer: use e.g. "
        "beit_base_patch16_224, eva02_tiny_patch14_224, swin_tiny_patch4_window7_224, vit_base_patch16_224"
    )
    assert [f.name for f in sorted(base._FAMILIES.values(), key=lambda f: f.name)] == ["beit", "eva", "swin", "vit"]


# --- the checks every family runs ---------------------------------------------------------------------------------
def two_sgd_steps(model, images, seed=0):
    """Two plain SGD steps (no weight decay: only a gradient can move a tensor); lr 0.01, so that the first step
    does not saturate the softmax of a random head on wide pooled features (whose gradients would then vanish)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    targets = torch.randint(0, C, (images.shape[0],))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()


def assert_trains_saves_and_loads(model, tmp_path, shape, **rebuild):
    """Two SGD steps on a float64 ``model`` (second-step movements of zero-started branches register in the first
    blocks) move every trainable tensor and no frozen one; the trained model, in float32, saved and loaded onto a
    float32 model rebuilt with ``rebuild`` (:func:`medpeft.load_trainable`), gives the same logits."""
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    two_sgd_steps(model, torch.randn(*shape, dtype=torch.double))
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{model.config.method}: trainable {name} never moved"
        else:
            assert torch.equal(p, before[name]), f"{model.config.method}: frozen {name} moved"
    model.float().eval()
    save_trainable(model, tmp_path / "m.safetensors")
    loaded = load_trainable(tmp_path / "m.safetensors", **rebuild).eval()
    images = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def assert_checkpointing_changes_nothing(plain, images):
    """timm's gradient checkpointing runs the blocks one by one: the same outputs and gradients (float64)."""
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.set_grad_checkpointing(True)
    outputs = []
    for model in (plain, checkpointed):
        model.train()
        out = model(images)
        out.square().sum().backward()
        outputs.append((out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=1e-12)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        assert grad is not None, name
        torch.testing.assert_close(grad, outputs[1][1][name], rtol=1e-9, atol=1e-12)


def train_end_to_end(tmp_path, capsys, backbone: str, img_size: int, method: str = "ept", *opts: str) -> dict:
    """``medpeft train`` on the demo colon task (1-shot, one epoch, random init); the run record."""
    from test_cli import run_cli

    make_demo_data(tmp_path / "data")
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(tmp_path / "data"),
            "--shots",
            "1",
            "--exp",
            "1",
            "--method",
            method,
            *[a for o in opts for a in ("--opt", o)],
            "--backbone",
            backbone,
            "--no-pretrained",
            "--img-size",
            str(img_size),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "selected epoch 1" in stdout
    record = json.loads((out / "run.json").read_text())
    assert record["spec"]["backbone"] == backbone and record["model"]["img_size"] == img_size
    assert set(record["result"]["test_metrics"]) == {"accuracy", "AUC", "ECE", "Brier"}
    return record


def prompts_of(model) -> dict:
    """EPT's prompt of every prompted block, by block number."""
    return {i: b.attn.prompt for i, b in enumerate(family_of(model.backbone).blocks()) if hasattr(b.attn, "prompt")}


def _dinov2_counts(name):
    return (
        lambda: timm.create_model(name, num_classes=0, img_size=70, depth=3),
        DINOV2_CASES,
        lambda method, t, **o: expected_trainable(method, 384, 3, 1 + DINOV2[name] + 25, 70, True, C, **o),
    )


@pytest.mark.parametrize(
    "template,cases,expected",
    [
        pytest.param(
            lambda: beit(**BEIT_SMALL),
            BEIT_CASES,
            lambda method, t, **o: expected_beit(method, 192, 3, 3, 48, 3, **o),
            id="beit",
        ),
        pytest.param(
            eva, EVA_CASES, lambda method, t, **o: expected_eva(method, 192, 12, 17, 56, 512, False, **o), id="eva"
        ),
        pytest.param(
            lambda: eva(**REGS),
            EVA_CASES,
            lambda method, t, **o: expected_eva(method, 192, 3, 19, 56, 512, True, **o),
            id="eva-registers-layerscale",
        ),
        pytest.param(
            lambda: swin(**SWIN_SMALL), SWIN_CASES, lambda method, t, **o: expected_swin(method, t, 64, **o), id="swin"
        ),
        *(pytest.param(*_dinov2_counts(name), id=name) for name in DINOV2),
    ],
)
def test_trainable_counts_match_definitions(template, cases, expected):
    template = template()
    frozen, head = sum(p.numel() for p in template.parameters()), template.num_features * C + C
    for method, options in cases:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        assert trainable == expected(method, template, **options), (method, options)
        added = head if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (method, options)
    full = build_model("full", template, C)
    assert count_parameters(full)[0] == count_parameters(full)[1] == frozen + head


def _swin_rows(way, layers):
    """EPT's prompt rows on the small Swin: the stage's tokens (16×16, 8×8); add/multiply: one block per window."""
    per_block = (256 if i < 2 else 64 for i in range(4)) if way in ("concat", "multiply_concat") else (9, 9, 4, 4)
    rows = dict(enumerate(per_block))
    return {i: rows[i] for i in sorted(layers or range(4))}


EPT_CASES = [
    *(
        pytest.param(lambda: beit(dtype=D, **BEIT_SMALL), way, [0, 2], {0: 10, 2: 10}, naive_ept_beit_features, 48)
        for way in ("concat", "multiply_concat", "add", "multiply")
    ),
    pytest.param(
        lambda: beit(dtype=D, **BEIT_SMALL, use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
        "concat",
        [0, 2],
        {0: 10, 2: 10},
        naive_ept_beit_features,
        48,
        id="beit-shared-bias",
    ),
    *(  # one row per token, registers included
        pytest.param(lambda: eva(dtype=D, **REGS), way, [0, 2], {0: 19, 2: 19}, naive_ept_eva_features, 56)
        for way in ("concat", "multiply_concat", "add", "multiply")
    ),
    *(
        pytest.param(
            lambda: swin(dtype=D, **SWIN_SMALL), way, layers, _swin_rows(way, layers), naive_ept_swin_features, 64
        )
        for way, layers in (("concat", None), ("multiply_concat", [3, 0]), ("add", [1, 2]), ("multiply", [1]))
    ),
    *(
        pytest.param(
            lambda name=name: dinov2(name, depth=3, dtype=D),
            way,
            [0, 2],
            {0: 1 + regs + 16, 2: 1 + regs + 16},
            naive_ept_features,
            56,
        )
        for name, regs in DINOV2.items()
        for way in ("concat", "multiply_concat", "add")
    ),
]


@pytest.mark.parametrize("make,way,layers,rows,naive,size", EPT_CASES)
def test_ept_equals_naive_eq5(make, way, layers, rows, naive, size):
    """Fused EPT against the materialised formula (position bias inside S; EVA: on rotated queries and keys; Swin:
    per shifted, padded window), float64, features and gradients."""
    vit = make()
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, way=way, layers=layers, prompt_length=7).double()
    prompts = prompts_of(model)
    assert {i: p.shape[0] for i, p in prompts.items()} == rows
    with torch.no_grad():
        for p in prompts.values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, size, size, dtype=D)
    ours = model.forward_features(images)
    theirs = naive(reference, prompts, way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), list(prompts.values())),
        torch.autograd.grad(theirs.square().sum(), list(prompts.values())),
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


@pytest.mark.parametrize(
    "make,deep,naive,size",
    [
        *(
            pytest.param(lambda: beit(dtype=D, **BEIT_SMALL), deep, naive_vpt_beit_features, 48)
            for deep in (True, False)
        ),
        pytest.param(
            lambda: beit(dtype=D, **BEIT_SMALL, use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
            True,
            naive_vpt_beit_features,
            48,
            id="beit-shared-bias",
        ),
        *(pytest.param(lambda: eva(dtype=D, **REGS), deep, naive_vpt_eva_features, 56) for deep in (True, False)),
    ],
)
def test_vpt_prompts_have_no_position(make, deep, naive, size):
    """VPT's prompts on BEiT (no relative position bias row) and EVA (prefix tokens without rotary position)."""
    vit = make()
    reference = copy.deepcopy(vit)
    model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
    prompt = model.backbone.prompt_tokens.prompt
    images = torch.randn(2, 3, size, size, dtype=D)
    ours = model.forward_features(images)
    theirs = naive(reference, prompt, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(ours.square().sum(), prompt)[0]
    g2 = torch.autograd.grad(theirs.square().sum(), prompt)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "make,size", [(lambda: beit(**BEIT_SMALL), 48), (lambda: eva(**REGS), 56)], ids=["beit", "eva"]
)
@pytest.mark.parametrize("method", ["lora", "adapter", "ssf", "peft:lora"])
def test_zero_initialised_methods_start_as_the_frozen_model(make, size, method):
    """LoRA, SSF and peft wrap the qkv Linear beside EVA's and BEiT's q/v biases; the adapter takes over the
    LayerScale γ₂."""
    vit = make()
    frozen = build_model("linear", copy.deepcopy(vit), C)
    model = build_model(method, vit, C)
    model.head.load_state_dict(frozen.head.state_dict())
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(images), frozen(images))


#: per family: the whole-width model (float64) that every method trains on, its image size and method options
BACKBONES = {
    # beit_base_patch16_224 with 2 of its 12 blocks, at 32 px (2×2 patches)
    "beit": (lambda: timm.create_model(BEIT, num_classes=0, img_size=32, depth=2), 32, {"vp": {"prompt_size": 4}}),
    # eva02_tiny_patch14_224 at 56 px (4×4 patches)
    "eva": (lambda: timm.create_model(EVA, num_classes=0, img_size=56), 56, {"vp": {"prompt_size": 5}}),
    # swin_tiny_patch4_window7_224 at 48 px: 12×12 (7×7 windows, padded, shifted), 6×6, 3×3 and 2×2 grids, so every
    # relative position table matters (a 1×1 window's softmax would ignore it)
    "swin": (
        lambda: timm.create_model(SWIN, num_classes=0, img_size=48),
        48,
        {"vp": {"prompt_size": 4}, "ept": {"prompt_length": 8}},
    ),
    # DINOv2 with registers at 70 px (room for vp's 30 px border), ViT-Ti width for speed; LayerScale off its init
    "dinov2": (lambda: dinov2(REG4, img_size=70, embed_dim=192, num_heads=3), 70, {}),
}


@pytest.fixture(scope="module")
def backbones():
    """``{family: (random float64 model, image size, method options)}``, each built once, on first use."""
    built = {}

    def get(family):
        if family not in built:
            make, size, options = BACKBONES[family]
            torch.manual_seed(0)
            built[family] = make().double(), size, options
        return built[family]

    return get


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_saves_and_loads(family, method, backbones, tmp_path):
    vit, size, options = backbones(family)
    model = build_model(method, copy.deepcopy(vit), C, seed=0, **options.get(method, {})).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, size, size), backbone=copy.deepcopy(vit).float(), seed=0)


SMALLER = {  # the same Linear layers, other adapters: on smaller models
    "beit": (lambda: beit(dtype=D, **BEIT_SMALL), 48),  # 3 blocks of width 192
    "eva": (lambda: eva(dtype=D, **REGS), 56),  # 3 blocks, registers, LayerScale
    "swin": (lambda: swin(img_size=32, dtype=D, embed_dim=48, depths=(2, 2), num_heads=(2, 4)), 32),  # two stages
}


@pytest.mark.parametrize("family", SMALLER)
@pytest.mark.parametrize("tuner", [t for t in PEFT_TUNERS if f"peft:{t}" not in TRAINED])
def test_other_peft_tuners_train_save_and_load(family, tuner, tmp_path):
    make, size = SMALLER[family]
    template = make()
    model = build_model(f"peft:{tuner}", copy.deepcopy(template), C, seed=0).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, size, size), backbone=copy.deepcopy(template).float(), seed=0)


CHECKPOINTED = {
    "beit": (lambda: beit(dtype=D, **BEIT_SMALL), 48, {"vp": {"prompt_size": 5}}),
    "eva": (lambda: eva(dtype=D, **REGS), 56, {"vp": {"prompt_size": 5}}),
    "swin": (
        lambda: swin(img_size=32, dtype=D, **SWIN_SMALL),
        32,
        {"vp": {"prompt_size": 4}, "ept": {"prompt_length": 8}},
    ),
}


@pytest.mark.parametrize("family", CHECKPOINTED)
@pytest.mark.parametrize("method", TRAINED)
def test_gradient_checkpointing_changes_nothing(family, method):
    make, size, options = CHECKPOINTED[family]
    model = build_model(method, make(), C, seed=0, **options.get(method, {}))
    assert_checkpointing_changes_nothing(model.double(), torch.randn(2, 3, size, size, dtype=D))


@pytest.mark.parametrize(
    "family,method,options,stages",
    [
        ("beit", "linear", {}, 3),
        ("beit", "partial", {"k": 1}, 1),
        ("eva", "linear", {}, 13),
        ("eva", "partial", {"k": 2}, 10),
        ("swin", "linear", {}, 13),  # a stage's first block runs its patch merging
        ("swin", "partial", {"k": 4}, 8),
        ("swin", "partial", {"k": 7}, 5),
    ],
)
def test_cached_prefix_then_suffix_is_the_model(family, method, options, stages, backbones):
    """The evaluation cache's split gives the model, bit for bit."""
    vit, size, _ = backbones(family)
    model = build_model(method, copy.deepcopy(vit).float(), C, seed=0, **options).eval()
    assert model.method.frozen_stages(model.backbone) == stages
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(forward_suffix(model, forward_prefix(model, x, stages), stages), model(x))


@pytest.mark.parametrize(
    "backbone,img_size,method,trainable",
    [
        (BEIT, 32, "ept", 12 * 5 * 4 + 768 * 2 + 2),  # the whole BEiT-B (12 blocks) by name
        (EVA, 28, "vpt", 12 * 4 * 192 + 192 * 2 + 2),
        (SWIN, 32, "ept", 4 * (2 * 64 + 2 * 16 + 6 * 4 + 2 * 1) + 768 * 2 + 2),  # EPT's rows: the stage's tokens
    ],
)
def test_medpeft_train_runs_end_to_end(backbone, img_size, method, trainable, tmp_path, capsys):
    record = train_end_to_end(tmp_path, capsys, backbone, img_size, method, "prompt_length=4")
    assert record["result"]["trainable_params"] == trainable
