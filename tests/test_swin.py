"""Every method on the Swin family (windowed attention, relative position bias, patch merging): counts, exactness,
training, checkpoints, evaluation cache, the command line and the speed harness."""

import copy
import json

import pytest
import timm
import torch
from click.testing import CliRunner
from family_checks import (
    TRAINED,
    C,
    assert_checkpointing_changes_nothing,
    assert_trains_saves_and_loads,
    train_end_to_end,
)
from reference import naive_ept_swin_features, naive_vpt_swin_features
from test_methods import width

import medpeft
from medpeft import build_model, count_parameters
from medpeft.evaluate import forward_prefix, forward_suffix
from medpeft.methods.hf_peft import PEFT_TUNERS

SWIN = "swin_tiny_patch4_window7_224"


def swin(img_size=64, dtype=torch.float32, **kwargs):
    """A random Swin-T (timm ``kwargs`` may shrink it), no stochastic depth, relative position tables off zero."""
    torch.manual_seed(0)
    model = timm.create_model(SWIN, num_classes=0, img_size=img_size, drop_path_rate=0.0, **kwargs).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model


SMALL = dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2))  # 64 px: 16×16 then 8×8 grids, 7×7 windows, padding


def blocks_of(model):
    """(width D, heads, window, starts a later stage, tokens) of every block of a timm Swin, in order."""
    return [
        (b.dim, b.attn.num_heads, b.window_size, s > 0 and j == 0, b.input_resolution[0] * b.input_resolution[1])
        for s, stage in enumerate(model.layers)
        for j, b in enumerate(stage.blocks)
    ]


def swin_block_params(D, heads, window):
    """norm1, qkv, relative position table, proj, norm2, fc1 (4D), fc2 of one Swin block."""
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * heads
    return 2 * D + (3 * D * D + 3 * D) + table + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D)


def merging_params(D):
    """A patch merging into width D: LayerNorm over 4·(D/2) channels, bias-free reduction 4·(D/2) → D."""
    return 2 * 2 * D + 2 * D * D


def expected_trainable(method, model, S, classes=C, **o):
    """Trainable parameter count of ``method`` on a timm Swin from the definitions, head included (S px): blocks
    counted across stages, a patch merging belongs to the first block of its stage; deep VPT prompts have their
    stage's width; EPT has one prompt row per token of the block's stage."""
    blocks = blocks_of(model)
    E, F_ = blocks[0][0], blocks[-1][0]
    head = F_ * classes + classes
    r, L = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10)
    prompted = blocks if o.get("deep", True) else blocks[:1]
    return (
        head
        + {
            "linear": lambda: 0,
            "partial": lambda: (
                sum(
                    swin_block_params(D, h, w) + (merging_params(D) if m else 0)
                    for D, h, w, m, _ in blocks[-o.get("k", 1) :]
                )
                + 2 * F_
            ),
            "mlp": lambda: (o.get("k", 3) - 1) * (F_ * F_ + F_),
            "bitfit": lambda: E + E + sum(11 * D + (2 * D if m else 0) for D, _, _, m, _ in blocks) + F_,
            "lora": lambda: sum(2 * (r * D + D * r) for D, *_ in blocks),
            "adapter": lambda: sum(2 * D * width(o, D) + width(o, D) + D for D, *_ in blocks),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: sum(L * D for D, *_ in prompted),
            "ept": lambda: sum(blocks[i][4] * L for i in (o.get("layers") or range(len(blocks)))),
            "ssf": lambda: 2 * E + sum(2 * 11 * D + (2 * 3 * D if m else 0) for D, _, _, m, _ in blocks) + 2 * F_,
            "peft:lora": lambda: sum(8 * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)) for D, *_ in blocks),
            "peft:ia3": lambda: sum(3 * D + D + 4 * D + 4 * D for D, *_ in blocks),
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
    ("ept", {"prompt_length": 20, "layers": [0, 3]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


def test_trainable_counts_match_definitions():
    template = swin(**SMALL)
    frozen = sum(p.numel() for p in template.parameters())
    for method, options in CASES:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        assert trainable == expected_trainable(method, template, 64, **options), (method, options)
        added = 48 * C + C if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (method, options)
    full = build_model("full", template, C)
    assert count_parameters(full)[0] == count_parameters(full)[1] == frozen + 48 * C + C


def prompts_of(model):
    return {
        i: b.attn.prompt
        for i, b in enumerate(medpeft.families.family_of(model.backbone).blocks())
        if hasattr(b.attn, "prompt")
    }


@pytest.mark.parametrize(
    "way,layers", [("concat", None), ("multiply_concat", [3, 0]), ("add", [1, 2]), ("multiply", [1])]
)
def test_ept_equals_naive_eq5_per_window(way, layers):
    """Fused EPT against the materialised formula on shifted, padded windows (16×16 grid, 7×7 windows), float64."""
    vit = swin(dtype=torch.double, **SMALL)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, way=way, layers=layers, prompt_length=7).double()
    prompts = prompts_of(model)
    assert {i: tuple(p.shape[:1]) for i, p in prompts.items()} == {
        i: (256 if i < 2 else 64,) if way in ("concat", "multiply_concat") else (9 if i < 2 else 4,)
        for i in (layers or range(4))
    }  # rows: the stage's tokens; add/multiply: one block per window
    with torch.no_grad():
        for p in prompts.values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, 64, 64, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_ept_swin_features(reference, prompts, way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), list(prompts.values())),
        torch.autograd.grad(theirs.square().sum(), list(prompts.values())),
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


def test_ept_patch_scaling_maps_each_token_through_its_window():
    """The analysis map: s_t = Z_t / (Z_t + Σ_l exp P_tl) with Z_t over the keys of token t's (shifted) window,
    scattered back to the stage grid, shown on the patch grid (a stage-s token on its 2^s × 2^s patches)."""
    from reference import qkv_of, swin_windows

    vit = swin(dtype=torch.double, **SMALL)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, prompt_length=4, layers=[1, 2]).double().eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.double)
    seen = {}
    maps = model.method.token_maps(model)
    handles = [
        module.register_forward_pre_hook(lambda m, args, i=i, fn=fn: seen.update({i: fn(args[0])}))
        for i, (module, fn) in maps.probes.items()
    ]
    inputs = {}
    blocks = medpeft.families.family_of(model.backbone).blocks()
    handles += [blocks[i].register_forward_pre_hook(lambda m, args, i=i: inputs.update({i: args[0]})) for i in (1, 2)]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    frozen_blocks = [b for stage in reference.layers for b in stage.blocks]
    for i in (1, 2):
        block, x, prompt = frozen_blocks[i], inputs[i], blocks[i].attn.prompt
        B, H, W, _ = x.shape
        windows, _ = swin_windows(block, block.norm1(x))
        tokens = swin_windows(block, torch.arange(H * W).view(1, H, W, 1), fill=-1)[0][..., 0].repeat(B, 1)
        q, k, _ = qkv_of(block.attn, windows)
        S = q @ k.transpose(-2, -1) * block.attn.scale + block.attn._get_rel_pos_bias()
        if block.attn_mask is not None:
            S = S + block.attn_mask.repeat(B, 1, 1)[:, None]
        s = torch.zeros(B, H * W, dtype=torch.double)
        for row in range(tokens.shape[0]):  # window `row` of image row // windows per image
            real = tokens[row] >= 0
            t = tokens[row][real]
            z = S[row].exp().sum(-1)[:, real]  # (heads, tokens of the window)
            s[row // (tokens.shape[0] // B), t] = (z / (z + prompt[t].exp().sum(-1))).mean(0)
        factor = 2 ** (i // 2)  # blocks 0, 1: stage 0 (16×16); 2, 3: stage 1 (8×8)
        expected = s.reshape(B, H, W).repeat_interleave(factor, 1).repeat_interleave(factor, 2).reshape(B, -1)
        assert seen[i].shape == (2, 256)
        torch.testing.assert_close(seen[i], expected.float(), rtol=1e-6, atol=1e-7)  # maps are float32


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_equals_the_official_prompted_swin(deep):
    vit = swin(dtype=torch.double, **SMALL)
    reference = copy.deepcopy(vit)
    model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
    tokens = model.backbone.prompt_tokens
    if deep:
        assert tokens.prompt.shape == (2, 3, 24) and [p.shape for p in tokens.stage_prompts] == [(2, 3, 48)]
        per_block = [*tokens.prompt, *tokens.stage_prompts[0]]
    else:
        assert tokens.prompt.shape == (1, 3, 24) and not len(tokens.stage_prompts)
        per_block = [tokens.prompt[0], None, None, None]
    images = torch.randn(2, 3, 64, 64, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_vpt_swin_features(reference, per_block, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    params = list(tokens.parameters())
    for g1, g2 in zip(
        torch.autograd.grad(ours.square().sum(), params), torch.autograd.grad(theirs.square().sum(), params)
    ):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-14)
        assert g1.abs().max() > 0
    one = model.forward_features(images[:1])  # each image's prompts meet its own windows only
    torch.testing.assert_close(one, ours[:1], rtol=0, atol=1e-12)


OPTIONS = {"vp": {"prompt_size": 4}, "ept": {"prompt_length": 8}}


@pytest.fixture(scope="module")
def swin_t():
    """swin_tiny_patch4_window7_224 (random init, float64) at 48 px: 12×12 (7×7 windows, padded, shifted), 6×6, 3×3
    and 2×2 grids, so every relative position table matters (a 1×1 window's softmax would ignore it)."""
    torch.manual_seed(0)
    return timm.create_model(SWIN, num_classes=0, img_size=48).double()


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_saves_and_loads(method, swin_t, tmp_path):
    model = build_model(method, copy.deepcopy(swin_t), C, seed=0, **OPTIONS.get(method, {})).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 48, 48), backbone=copy.deepcopy(swin_t).float(), seed=0)


@pytest.mark.parametrize("tuner", [t for t in PEFT_TUNERS if f"peft:{t}" not in TRAINED])
def test_other_peft_tuners_train_save_and_load(tuner, tmp_path):
    """The other tested ``peft`` tuners (the same Linear layers, other adapters) on a smaller
    Swin-T (width 48, two stages)."""
    template = swin(img_size=32, dtype=torch.double, embed_dim=48, depths=(2, 2), num_heads=(2, 4))
    model = build_model(f"peft:{tuner}", copy.deepcopy(template), C, seed=0).double()
    assert_trains_saves_and_loads(model, tmp_path, (2, 3, 32, 32), backbone=copy.deepcopy(template).float(), seed=0)


@pytest.mark.parametrize("method", TRAINED)
def test_gradient_checkpointing_changes_nothing(method):
    model = build_model(method, swin(img_size=32, dtype=torch.double, **SMALL), C, seed=0, **OPTIONS.get(method, {}))
    assert_checkpointing_changes_nothing(model.double(), torch.randn(2, 3, 32, 32, dtype=torch.double))


@pytest.mark.parametrize(
    "method,options,stages", [("linear", {}, 13), ("partial", {"k": 4}, 8), ("partial", {"k": 7}, 5)]
)
def test_cached_prefix_then_suffix_is_the_model(method, options, stages, swin_t):
    """The evaluation cache's split (a stage's first block runs its patch merging) gives the model, bit for bit."""
    model = build_model(method, copy.deepcopy(swin_t).float(), C, seed=0, **options).eval()
    assert model.method.frozen_stages(model.backbone) == stages
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(forward_suffix(model, forward_prefix(model, x, stages), stages), model(x))


def test_medpeft_train_runs_end_to_end(tmp_path, capsys):
    record = train_end_to_end(tmp_path, capsys, SWIN, 32, "ept", "prompt_length=4")
    assert record["result"]["trainable_params"] == 4 * (2 * 64 + 2 * 16 + 6 * 4 + 2 * 1) + 768 * 2 + 2  # rows: tokens


def test_medpeft_speed_takes_a_swin(tmp_path):
    """``medpeft speed --backbone swin_tiny_patch4_window7_224``: the floor (one (96,) shift at the first block's
    input), EPT and its naive reference, and every number reported."""
    from medpeft.cli.speed import command

    result = CliRunner().invoke(
        command,
        [
            "--methods",
            "naive-ept,ept",
            "--backbone",
            SWIN,
            "--img-size",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch",
            "1",
            "--threads",
            "1",
            "--omp-wait-policy",
            "inherit",
            "--no-memory",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "speed.json").read_text())
    methods = saved["methods"]
    assert list(methods) == ["floor", "naive-ept", "ept"]
    assert methods["floor"]["trainable_params"] == 96 and saved["environment"]["tokens"] == 64
    assert methods["naive-ept"]["trainable_params"] == methods["ept"]["trainable_params"]
    assert all(m["step_s"] > 0 and m["eval_img_per_s"] > 0 for m in methods.values())
    assert "| naive-ept |" in result.output


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's table resampling on a deprecated indexing path
def test_local_weights_of_another_size_load_through_the_swin_filter(tmp_path):
    """A 224 px checkpoint used at 48 px: timm's Swin filter resizes the relative position tables to the smaller
    windows; Google .npz files are refused (they are ViT checkpoints)."""
    torch.manual_seed(1)
    source = timm.create_model(SWIN, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "swin.pth")
    model = build_model("linear", SWIN, C, weights=tmp_path / "swin.pth", img_size=48)
    assert torch.equal(model.backbone.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model.backbone.layers[2].blocks[0].attn.relative_position_bias_table.shape == (25, 12)  # 3×3 windows
    (tmp_path / "swin.npz").write_bytes(b"")
    with pytest.raises(medpeft.UserError, match=r"\.npz checkpoints are for ViTs"):
        build_model("linear", SWIN, C, weights=tmp_path / "swin.npz")


def test_token_init_adds_the_mean_patch_embedding_to_every_stage():
    model = build_model("ept", swin(**SMALL), C, prompt_length=24, init="token", layers=[0, 3])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mean = model.backbone.patch_embed(images).mean(dim=(0, 1, 2))  # (24,): what the first block receives
    model.method.init_from_data(model, images)
    blocks = medpeft.families.family_of(model.backbone).blocks()
    torch.testing.assert_close(blocks[0].attn.prompt, mean.expand(256, -1))  # L = C: every row is the mean token
    torch.testing.assert_close(blocks[3].attn.prompt, mean.expand(64, -1))
