"""What only the Swin family has (the shared checks are in test_families.py): EPT's patch-scaling map through the
windows, VPT as the official prompted Swin, token init per stage, ``medpeft speed`` and timm's Swin checkpoint
filter."""

import copy
import json

import pytest
import timm
import torch
from click.testing import CliRunner
from family_models import SWIN, SWIN_SMALL, C, swin
from reference import naive_vpt_swin_features

import medpeft
from medpeft import build_model


def test_ept_patch_scaling_maps_each_token_through_its_window():
    """The analysis map: s_t = Z_t / (Z_t + Σ_l exp P_tl) with Z_t over the keys of token t's (shifted) window,
    scattered back to the stage grid, shown on the patch grid (a stage-s token on its 2^s × 2^s patches)."""
    from reference import qkv_of, swin_windows

    vit = swin(dtype=torch.double, **SWIN_SMALL)
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
    vit = swin(dtype=torch.double, **SWIN_SMALL)
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
    model = build_model("ept", swin(**SWIN_SMALL), C, prompt_length=24, init="token", layers=[0, 3])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mean = model.backbone.patch_embed(images).mean(dim=(0, 1, 2))  # (24,): what the first block receives
    model.method.init_from_data(model, images)
    blocks = medpeft.families.family_of(model.backbone).blocks()
    torch.testing.assert_close(blocks[0].attn.prompt, mean.expand(256, -1))  # L = C: every row is the mean token
    torch.testing.assert_close(blocks[3].attn.prompt, mean.expand(64, -1))
