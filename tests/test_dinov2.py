"""What only DINOv2 checks (the shared checks are in test_families.py): VPT's prompts after every prefix token
(CLS, registers), the adapter beside the whole LayerScale MLP branch."""

import copy

import pytest
import torch
import torch.nn.functional as F
from family_models import DINOV2, REG4, C, dinov2
from reference import naive_vpt_features

from medpeft import build_model


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_prompts_follow_all_prefix_tokens(deep):
    vit = dinov2(REG4, depth=3, dtype=torch.double)
    reference = copy.deepcopy(vit)
    model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
    prompt = model.backbone.prompt_tokens.prompt
    seen = []
    for block in model.backbone.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    ours = model.forward_features(images)
    assert all(x.shape[1] == 5 + 3 + 16 for x in seen)  # CLS, 4 registers, 3 prompts, 16 patches
    for i, x in enumerate(seen):
        if i < prompt.shape[0]:
            assert torch.equal(x[:, 5:8], prompt[i].expand(2, -1, -1))
    theirs = naive_vpt_features(reference, prompt, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(ours.square().sum(), prompt)[0]
    g2 = torch.autograd.grad(theirs.square().sum(), prompt)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", DINOV2)
def test_adapter_on_layerscale_blocks_is_beside_the_whole_mlp_branch(name):
    vit = dinov2(name, dtype=torch.double)
    reference = copy.deepcopy(vit)
    frozen = build_model("linear", copy.deepcopy(vit), C).double()
    model = build_model("adapter", vit, C, bottleneck=8, scale=0.5).double()
    model.head.load_state_dict(frozen.head.state_dict())
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    with torch.no_grad():
        assert torch.equal(model(images), frozen(images))  # up = 0: the frozen model
        adapters = [b.mlp for b in model.backbone.blocks]
        for a in adapters:
            a.adapter_up.weight.normal_()
            a.adapter_up.bias.normal_()
        x = reference.norm_pre(reference._pos_embed(reference.patch_embed(images)))
        for block, a in zip(reference.blocks, adapters):  # by hand: the adapter's output is not multiplied by γ₂
            x = x + block.ls1.gamma * block.attn(block.norm1(x))
            down = F.linear(x, a.adapter_down.weight, a.adapter_down.bias).relu()
            x = (
                x
                + block.ls2.gamma * block.mlp(block.norm2(x))
                + 0.5 * F.linear(down, a.adapter_up.weight, a.adapter_up.bias)
            )
        torch.testing.assert_close(model.forward_features(images), reference.norm(x)[:, 0], rtol=0, atol=1e-12)
