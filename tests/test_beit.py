"""Every method on the BEiT family (relative position bias per block or shared, LayerScale γ): counts, exactness,
training, checkpoints, evaluation cache and the command line. BEiT-B has 86M parameters: the method tests run it
at reduced depth (and width, for the float64 references); the end-to-end ``medpeft train`` runs the whole model."""

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
from reference import naive_ept_beit_features, naive_vpt_beit_features
from test_methods import width

from medpeft import build_model, count_parameters
from medpeft.evaluate import forward_prefix, forward_suffix
from medpeft.methods.hf_peft import PEFT_TUNERS

BEIT = "beit_base_patch16_224"


def beit(img_size=48, dtype=torch.float32, **kwargs):
    """A random BEiT-B/16 (timm ``kwargs`` shrink it); relative position tables (zero at init), γ and q/v biases
    moved off their init."""
    torch.manual_seed(0)
    model = timm.create_model(BEIT, num_classes=0, img_size=img_size, **kwargs).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.5)
            elif name.endswith(("gamma_1", "gamma_2")):
                p.uniform_(0.2, 1.0)
    return model


SMALL = dict(depth=3, embed_dim=192, num_heads=3)


def expected_trainable(method, D, depth, grid, S, heads, classes=C, **o):
    """Trainable parameter count from the definitions on a BEiT block: fused qkv without bias beside q/v biases, a
    relative position table of (2h − 1)(2w − 1) + 3 rows (the 3: CLS to token, token to CLS, CLS to CLS) per head,
    LayerScale γ₁, γ₂; the final norm is ``fc_norm`` (average pooling)."""
    table = ((2 * grid - 1) ** 2 + 3) * heads
    block = 2 * D + 3 * D * D + 2 * D + table + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D) + 2 * D
    r, L, N = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10), 1 + grid * grid
    return (
        D * classes
        + classes
        + {
            "linear": lambda: 0,
            "partial": lambda: o.get("k", 1) * block + 2 * D,
            "mlp": lambda: (o.get("k", 3) - 1) * (D * D + D),
            "bitfit": lambda: D + depth * (D + 2 * D + D + D + 4 * D + D) + D,
            "lora": lambda: depth * 2 * (r * D + D * r),
            "adapter": lambda: depth * (2 * D * width(o, D) + width(o, D) + D),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: (depth if o.get("deep", True) else 1) * L * D,
            "ept": lambda: len(o.get("layers") or range(depth)) * N * L,
            "ssf": lambda: 2 * D + depth * 2 * (D + 3 * D + D + D + 4 * D + D) + 2 * D,
            "peft:lora": lambda: depth * 8 * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)),
            "peft:ia3": lambda: depth * (3 * D + D + 4 * D + 4 * D),
        }[method]()
    )


CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 2}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"reduction": 8}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [1]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


def test_trainable_counts_match_definitions():
    template = beit(**SMALL)
    frozen = sum(p.numel() for p in template.parameters())
    for method, options in CASES:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        assert trainable == expected_trainable(method, 192, 3, 3, 48, 3, **options), (method, options)
        added = 192 * C + C if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (method, options)


@pytest.mark.parametrize(
    "way,shared", [("concat", False), ("multiply_concat", False), ("add", False), ("multiply", False), ("concat", True)]
)
def test_ept_equals_naive_eq5_with_the_bias_inside_s(way, shared):
    kwargs = dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False) if shared else {}
    vit = beit(dtype=torch.double, **SMALL, **kwargs)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, way=way, layers=[0, 2], prompt_length=7).double()
    prompts = {i: model.backbone.blocks[i].attn.prompt for i in (0, 2)}
    with torch.no_grad():
        for p in prompts.values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, 48, 48, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_ept_beit_features(reference, prompts, way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), list(prompts.values())),
        torch.autograd.grad(theirs.square().sum(), list(prompts.values())),
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


@pytest.mark.parametrize("deep,shared", [(True, False), (False, False), (True, True)])
def test_vpt_prompts_have_no_bias_row(deep, shared):
    kwargs = dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False) if shared else {}
    vit = beit(dtype=torch.double, **SMALL, **kwargs)
    reference = copy.deepcopy(vit)
    model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
    prompt = model.backbone.prompt_tokens.prompt
    images = torch.randn(2, 3, 48, 48, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_vpt_beit_features(reference, prompt, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(ours.square().sum(), prompt)[0]
    g2 = torch.autograd.grad(theirs.square().sum(), prompt)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["lora", "adapter", "ssf", "peft:lora"])
def test_zero_initialised_methods_start_as_the_frozen_model(method):
    """LoRA, SSF and peft wrap the qkv Linear beside BEiT's q/v biases; the adapter takes over the LayerScale γ₂."""
    vit = beit(**SMALL)
    frozen = build_model("linear", copy.deepcopy(vit), C)
    model = build_model(method, vit, C)
    model.head.load_state_dict(frozen.head.state_dict())
    images = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(images), frozen(images))


@pytest.fixture(scope="module")
def beit_b():
    """beit_base_patch16_224 (random init, float64) with 2 of its 12 blocks, at 32 px (2×2 patches)."""
    torch.manual_seed(0)
    return timm.create_model(BEIT, num_classes=0, img_size=32, depth=2).double()


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_saves_and_loads(method, beit_b, tmp_path):
    options = {"vp": {"prompt_size": 4}}.get(method, {})
    model = build_model(method, copy.deepcopy(beit_b), C, seed=0, **options).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 32, 32), backbone=copy.deepcopy(beit_b).float(), seed=0)


@pytest.mark.parametrize("tuner", [t for t in PEFT_TUNERS if f"peft:{t}" not in TRAINED])
def test_other_peft_tuners_train_save_and_load(tuner, tmp_path):
    """The other tested ``peft`` tuners (the same Linear layers, other adapters) on a smaller
    BEiT-B (3 blocks of width 192)."""
    template = beit(dtype=torch.double, **SMALL)
    model = build_model(f"peft:{tuner}", copy.deepcopy(template), C, seed=0).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 48, 48), backbone=copy.deepcopy(template).float(), seed=0)


@pytest.mark.parametrize("method", TRAINED)
def test_gradient_checkpointing_changes_nothing(method):
    options = {"vp": {"prompt_size": 5}}.get(method, {})
    model = build_model(method, beit(dtype=torch.double, **SMALL), C, seed=0, **options)
    assert_checkpointing_changes_nothing(model.double(), torch.randn(2, 3, 48, 48, dtype=torch.double))


@pytest.mark.parametrize("method,options,stages", [("linear", {}, 3), ("partial", {"k": 1}, 1)])
def test_cached_prefix_then_suffix_is_the_model(method, options, stages, beit_b):
    model = build_model(method, copy.deepcopy(beit_b).float(), C, seed=0, **options).eval()
    assert model.method.frozen_stages(model.backbone) == stages
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(forward_suffix(model, forward_prefix(model, x, stages), stages), model(x))


def test_medpeft_train_runs_end_to_end(tmp_path, capsys):
    """The whole BEiT-B (12 blocks) by name at 32 px."""
    record = train_end_to_end(tmp_path, capsys, BEIT, 32, "ept", "prompt_length=4")
    assert record["result"]["trainable_params"] == 12 * 5 * 4 + 768 * 2 + 2
