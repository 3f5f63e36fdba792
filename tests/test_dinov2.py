"""Every method on the DINOv2 family (patch 14, LayerScale, register tokens): counts, exactness, training."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from reference import naive_ept_features, naive_vpt_features
from test_methods import expected_trainable

import medpeft
from medpeft import build_model, count_parameters

C = 3
DINOV2 = {"vit_small_patch14_dinov2": 0, "vit_small_patch14_reg4_dinov2": 4}  # name: register tokens
REG4 = "vit_small_patch14_reg4_dinov2"


def dinov2(name: str, img_size: int = 56, depth: int = 2, dtype=torch.float32, **kwargs):
    """A small random DINOv2 ViT-S/14 (timm ``kwargs`` may shrink it further); LayerScale γ and the prefix tokens
    moved off their (near-)zero init."""
    torch.manual_seed(0)
    vit = timm.create_model(name, num_classes=0, img_size=img_size, depth=depth, **kwargs).to(dtype)
    with torch.no_grad():
        for block in vit.blocks:
            block.ls1.gamma.uniform_(0.2, 1.0)
            block.ls2.gamma.uniform_(0.2, 1.0)
        vit.cls_token.normal_()
        if vit.reg_token is not None:
            vit.reg_token.normal_()
    return vit


CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"bottleneck": 8}),
    ("vp", {}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0]}),
    ("ept", {"layers": [2, 0]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


@pytest.mark.parametrize("name", DINOV2)
def test_trainable_counts_match_definitions(name):
    D, depth, S = 384, 3, 70
    N = 1 + DINOV2[name] + (S // 14) ** 2
    template = timm.create_model(name, num_classes=0, img_size=S, depth=depth)
    frozen = sum(p.numel() for p in template.parameters())
    for method, options in CASES:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        assert trainable == expected_trainable(method, D, depth, N, S, True, C, **options), (name, method, options)
        added = D * C + C if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (name, method, options)
    full = build_model("full", template, C)
    assert count_parameters(full)[0] == count_parameters(full)[1] == frozen + D * C + C


@pytest.mark.parametrize("name", DINOV2)
@pytest.mark.parametrize("way", ["concat", "multiply_concat", "add"])
def test_ept_equals_naive_eq5(name, way):
    vit = dinov2(name, depth=3, dtype=torch.double)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, C, way=way, layers=[0, 2], prompt_length=7).double()
    prompts = {i: model.backbone.blocks[i].attn.prompt for i in (0, 2)}
    assert prompts[0].shape[0] == 1 + DINOV2[name] + 16  # one row per token, registers included
    with torch.no_grad():
        for p in prompts.values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, 56, 56, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_ept_features(reference, prompts, way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), list(prompts.values())),
        torch.autograd.grad(theirs.square().sum(), list(prompts.values())),
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


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


def two_sgd_steps(model, images, seed=0):
    """Two plain SGD steps (no weight decay: only a gradient can move a tensor)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    targets = torch.randint(0, C, (images.shape[0],))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()


# medpeft's own methods and two peft tuners; the other peft tuners wrap the same Linear layers (see test_methods)
TRAINED = [m for m in medpeft.available_methods() if not m.startswith("peft:")] + ["peft:lora", "peft:ia3"]


@pytest.mark.parametrize("method", TRAINED)
def test_frozen_stays_frozen_and_trainable_learns_with_registers(method):
    # 70 px: room for vp's 30 px border; ViT-Ti width (192) for speed; float64: second-step movements (VeRA's
    # λ_d once λ_b has left zero) register
    model = build_model(method, dinov2(REG4, img_size=70, embed_dim=192, num_heads=3), C).double()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    two_sgd_steps(model, torch.randn(2, 3, 70, 70, dtype=torch.double))
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{method}: trainable {name} never moved"
        else:
            assert torch.equal(p, before[name]), f"{method}: frozen {name} moved"
