"""Every method on the EVA family (EVA-02, RoPE ViTs: rotary position, SwiGLU MLPs, registers, LayerScale γ):
counts, exactness, training, checkpoints, evaluation cache and the command line."""

import copy

import pytest
import timm
import torch
from family_checks import (
    TRAINED,
    C,
    assert_checkpointing_changes_nothing,
    assert_trains_saves_and_loads,
    train_end_to_end,
)
from reference import naive_ept_eva_features, naive_vpt_eva_features
from test_methods import width

from medpeft import build_model, count_parameters
from medpeft.evaluate import forward_prefix, forward_suffix
from medpeft.methods.hf_peft import PEFT_TUNERS

EVA = "eva02_tiny_patch14_224"


def eva(img_size=56, dtype=torch.float32, **kwargs):
    """A random EVA-02 Ti/14 (timm ``kwargs`` may add registers, LayerScale, or shrink it); γ and the prefix tokens
    moved off their init."""
    torch.manual_seed(0)
    model = timm.create_model(EVA, num_classes=0, img_size=img_size, **kwargs).to(dtype)
    with torch.no_grad():
        for block in model.blocks:
            for gamma in (block.gamma_1, block.gamma_2):
                if gamma is not None:
                    gamma.uniform_(0.2, 1.0)
            if block.attn.q_bias is not None:
                block.attn.q_bias.normal_(0, 0.1)
                block.attn.v_bias.normal_(0, 0.1)
        model.cls_token.normal_()
        if model.reg_token is not None:
            model.reg_token.normal_()
    return model


REGS = dict(num_reg_tokens=2, init_values=0.5, depth=3)  # registers and LayerScale on the EVA-02 Ti blocks


def expected_trainable(method, D, depth, N, S, hidden, layer_scale=False, classes=C, **o):
    """Trainable parameter count from the definitions on an EVA-02 block: fused qkv without bias beside q/v biases,
    packed SwiGLU (fc1: D → 2·hidden, fc2: hidden → D); the final norm is ``fc_norm`` (average pooling)."""
    block = (
        2 * D
        + 3 * D * D
        + 2 * D
        + (D * D + D)
        + 2 * D
        + (D * 2 * hidden + 2 * hidden)
        + (hidden * D + D)
        + 2 * D * layer_scale
    )
    r, L = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10)
    return (
        D * classes
        + classes
        + {
            "linear": lambda: 0,
            "partial": lambda: o.get("k", 1) * block + 2 * D,
            "mlp": lambda: (o.get("k", 3) - 1) * (D * D + D),
            "bitfit": lambda: D + depth * (D + 2 * D + D + D + 2 * hidden + D) + D,
            "lora": lambda: depth * 2 * (r * D + D * r),
            "adapter": lambda: depth * (2 * D * width(o, D) + width(o, D) + D),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: (depth if o.get("deep", True) else 1) * L * D,
            "ept": lambda: len(o.get("layers") or range(depth)) * N * L,
            "ssf": lambda: 2 * D + depth * 2 * (D + 3 * D + D + D + 2 * hidden + D) + 2 * D,
            "peft:lora": lambda: depth * 8 * ((D + 3 * D) + (D + D) + (D + 2 * hidden) + (hidden + D)),
            "peft:ia3": lambda: depth * (3 * D + D + 2 * hidden + hidden),
        }[method]()
    )


CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"reduction": 8}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0, -1]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


@pytest.mark.parametrize("kwargs,layer_scale,N", [({}, False, 17), (REGS, True, 19)])
def test_trainable_counts_match_definitions(kwargs, layer_scale, N):
    template = eva(**kwargs)
    depth = len(template.blocks)
    frozen = sum(p.numel() for p in template.parameters())
    for method, options in CASES:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        expected = expected_trainable(method, 192, depth, N, 56, 512, layer_scale, **options)
        assert trainable == expected, (method, options)
        added = 192 * C + C if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (method, options)


@pytest.mark.parametrize("way", ["concat", "multiply_concat", "add", "multiply"])
def test_ept_equals_naive_eq5_on_rotated_queries_and_keys(way):
    vit = eva(dtype=torch.double, **REGS)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, way=way, layers=[0, 2], prompt_length=7).double()
    prompts = {i: model.backbone.blocks[i].attn.prompt for i in (0, 2)}
    assert prompts[0].shape[0] == 1 + 2 + 16  # one row per token, registers included
    with torch.no_grad():
        for p in prompts.values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_ept_eva_features(reference, prompts, way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), list(prompts.values())),
        torch.autograd.grad(theirs.square().sum(), list(prompts.values())),
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_prompts_are_prefix_tokens_without_rotary_position(deep):
    vit = eva(dtype=torch.double, **REGS)
    reference = copy.deepcopy(vit)
    model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
    prompt = model.backbone.prompt_tokens.prompt
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_vpt_eva_features(reference, prompt, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(ours.square().sum(), prompt)[0]
    g2 = torch.autograd.grad(theirs.square().sum(), prompt)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["lora", "adapter", "ssf", "peft:lora"])
def test_zero_initialised_methods_start_as_the_frozen_model(method):
    """LoRA, SSF and peft wrap the qkv Linear beside EVA's q/v biases; the adapter takes over the LayerScale γ₂."""
    vit = eva(**REGS)
    frozen = build_model("linear", copy.deepcopy(vit), C)
    model = build_model(method, vit, C)
    model.head.load_state_dict(frozen.head.state_dict())
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(images), frozen(images))


def test_separate_q_k_v_projections():
    """EVA-02 B/L keep q, k and v apart (``qkv_fused=False``): EPT computes with them (a vanishing prompt gives the
    frozen model), LoRA adapts q and v (B = 0: the frozen model at the start; then A and B train)."""
    vit = eva(dtype=torch.double, qkv_fused=False, depth=2)
    frozen = build_model("linear", copy.deepcopy(vit), C).double()
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    ept = build_model("ept", copy.deepcopy(vit), C, prompt_length=5).double()
    with torch.no_grad():
        for block in ept.backbone.blocks:
            block.attn.prompt.fill_(-1e4)
        torch.testing.assert_close(ept.forward_features(images), frozen.forward_features(images), rtol=0, atol=1e-12)
    lora = build_model("lora", vit, C, r=4).double()
    assert count_parameters(lora)[0] == 2 * 2 * (4 * 192 + 192 * 4) + 192 * C + C
    lora.head.load_state_dict(frozen.head.state_dict())
    with torch.no_grad():
        assert torch.equal(lora(images), frozen(images))
    names = sorted(n for n, p in lora.named_parameters() if p.requires_grad and "lora" in n)
    assert names[:4] == [
        "backbone.blocks.0.attn.q_proj.lora_A",
        "backbone.blocks.0.attn.q_proj.lora_B",
        "backbone.blocks.0.attn.v_proj.lora_A",
        "backbone.blocks.0.attn.v_proj.lora_B",
    ]


@pytest.fixture(scope="module")
def eva_ti():
    """eva02_tiny_patch14_224 (random init, float64) at 56 px (4×4 patches)."""
    torch.manual_seed(0)
    return timm.create_model(EVA, num_classes=0, img_size=56).double()


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_saves_and_loads(method, eva_ti, tmp_path):
    options = {"vp": {"prompt_size": 5}}.get(method, {})
    model = build_model(method, copy.deepcopy(eva_ti), C, seed=0, **options).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 56, 56), backbone=copy.deepcopy(eva_ti).float(), seed=0)


@pytest.mark.parametrize("tuner", [t for t in PEFT_TUNERS if f"peft:{t}" not in TRAINED])
def test_other_peft_tuners_train_save_and_load(tuner, tmp_path):
    """The other tested ``peft`` tuners (the same Linear layers, other adapters) on a smaller
    EVA-02 Ti (3 blocks, registers, LayerScale)."""
    template = eva(dtype=torch.double, **REGS)
    model = build_model(f"peft:{tuner}", copy.deepcopy(template), C, seed=0).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 56, 56), backbone=copy.deepcopy(template).float(), seed=0)


@pytest.mark.parametrize("method", TRAINED)
def test_gradient_checkpointing_changes_nothing(method):
    options = {"vp": {"prompt_size": 5}}.get(method, {})
    model = build_model(method, eva(dtype=torch.double, **REGS), C, seed=0, **options)
    assert_checkpointing_changes_nothing(model.double(), torch.randn(2, 3, 56, 56, dtype=torch.double))


@pytest.mark.parametrize("method,options,stages", [("linear", {}, 13), ("partial", {"k": 2}, 10)])
def test_cached_prefix_then_suffix_is_the_model(method, options, stages, eva_ti):
    model = build_model(method, copy.deepcopy(eva_ti).float(), C, seed=0, **options).eval()
    assert model.method.frozen_stages(model.backbone) == stages
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(forward_suffix(model, forward_prefix(model, x, stages), stages), model(x))


def test_medpeft_train_runs_end_to_end(tmp_path, capsys):
    record = train_end_to_end(tmp_path, capsys, EVA, 28, "vpt", "prompt_length=4")
    assert record["result"]["trainable_params"] == 12 * 4 * 192 + 192 * 2 + 2


def test_local_weights_load_through_the_eva_filter(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(EVA, num_classes=0, img_size=56).eval()
    torch.save(source.state_dict(), tmp_path / "eva.pth")
    model = build_model("linear", EVA, C, weights=tmp_path / "eva.pth", img_size=56).eval()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), source(images), rtol=0, atol=1e-5)
