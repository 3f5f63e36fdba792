"""EPT equals the paper's Eq. 5 (materialised logits), forward and gradient, through fused attention."""

import copy

import pytest
import timm
import torch
from reference import naive_ept_features

from medpeft import build_model
from medpeft.methods.ept.kernels import (
    _CPU_FLASH,
    _CUDA_EFFICIENT,
    _CUDA_FLASH,
    _extra_channel_attention,
    _lse_kernel,
    _ScaledFusedAttention,
    null_key_attention,
)


def prompts_of(model):
    return {i: b.attn.prompt for i, b in enumerate(model.backbone.blocks) if hasattr(b.attn, "prompt")}


@pytest.mark.parametrize("size", [224, 96])
@pytest.mark.parametrize("way", ["concat", "multiply_concat", "add", "multiply"])
@pytest.mark.parametrize("layers", [None, [0], [5, 2]])
def test_ept_equals_naive_eq5(size, way, layers):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=size).double()
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, 3, way=way, layers=layers, prompt_length=7).double()
    with torch.no_grad():  # move the prompts away from their (special) initial values
        for p in prompts_of(model).values():
            p.add_(torch.randn_like(p))
    images = torch.randn(2, 3, size, size, dtype=torch.double)
    ours = model.forward_features(images)
    theirs = naive_ept_features(reference, prompts_of(model), way, images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    prompts = list(prompts_of(model).values())
    assert len(prompts) == (12 if layers is None else len(layers))
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), prompts), torch.autograd.grad(theirs.square().sum(), prompts)
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-14)
        assert g_ours.abs().max() > 0


def test_ept_float32_matches_naive():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, 3, init="uniform")
    images = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(
        model.forward_features(images),
        naive_ept_features(reference, prompts_of(model), "concat", images),
        rtol=1e-4,
        atol=1e-5,
    )


def test_ept_with_vanishing_prompt_is_the_frozen_backbone():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=96)
    frozen = copy.deepcopy(vit)
    model = build_model("ept", vit, 3)
    with torch.no_grad():
        for p in prompts_of(model).values():
            p.fill_(-1e4)
        images = torch.randn(2, 3, 96, 96)
        torch.testing.assert_close(model.forward_features(images), frozen(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_null_key_kernels_equal_materialised_softmax(dtype):
    """The CPU flash path and the portable extra-channel path against softmax([logit | S]) with column 0 dropped."""
    assert _lse_kernel(torch.empty(1, 1, 1, 8, dtype=dtype), 0.0) is _CPU_FLASH
    assert _lse_kernel(torch.empty(1, 1, 1, 8, dtype=dtype), 0.1) is None
    torch.manual_seed(0)
    B, H, N, d = 2, 3, 11, 16
    q, k, v = (torch.randn(B, H, N, d, dtype=dtype, requires_grad=True) for _ in range(3))
    logit = torch.randn(B, H, N, dtype=dtype, requires_grad=True)
    scale = d**-0.5
    S = q @ k.transpose(-2, -1) * scale
    expected = torch.cat([logit[..., None], S], -1).softmax(-1)[..., 1:] @ v
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    grads_expected = torch.autograd.grad(expected.square().sum(), (q, k, v, logit))
    for fn in (
        lambda: _ScaledFusedAttention.apply(q, k, v, logit, scale, _CPU_FLASH),
        lambda: _extra_channel_attention(q, k, v, logit, scale),
        lambda: null_key_attention(q, k, v, logit, scale),
    ):
        out = fn()
        torch.testing.assert_close(out, expected, **tol)
        for g, g_expected in zip(torch.autograd.grad(out.square().sum(), (q, k, v, logit)), grads_expected):
            torch.testing.assert_close(g, g_expected, **tol)


def test_ept_patch_scaling_is_z_over_z_plus_prompt_mass():
    torch.manual_seed(0)
    model = build_model("ept", "vit_tiny_patch16_224", 3, pretrained=False, img_size=64, prompt_length=4).double()
    attn = model.backbone.blocks[0].attn
    x = torch.randn(2, 17, 192, dtype=torch.double)
    q, k, _ = attn.qkv(x).reshape(2, 17, 3, 3, 64).permute(2, 0, 3, 1, 4)
    Z = ((q @ k.transpose(-2, -1)) / 8).exp().sum(-1)
    R = attn.prompt.exp().sum(-1)
    torch.testing.assert_close(attn.patch_scaling(x), Z / (Z + R), rtol=1e-12, atol=0)


def test_ept_inits():
    torch.manual_seed(0)
    make = lambda **o: (
        build_model(
            "ept",
            "vit_tiny_patch16_224",
            3,
            pretrained=False,
            img_size=64,  # noqa: E731
            prompt_length=50,
            **o,
        )
        .backbone.blocks[0]
        .attn.prompt
    )
    assert abs(make().std().item() - 0.02) < 0.002
    assert make(init="uniform").abs().max() <= 0.08
    assert make(init="zero").abs().max() == 0
    assert abs(make(init="kaiming").std().item() - (2 / (17 * 50)) ** 0.5) < 0.01
    assert torch.equal(make(way="add"), torch.zeros(17, 17))
    assert torch.equal(make(way="multiply"), torch.ones(17, 17))


def test_token_init_adds_the_mean_embedded_token_once():
    torch.manual_seed(0)
    model = build_model(
        "ept", "vit_tiny_patch16_224", 3, pretrained=False, img_size=64, prompt_length=192, init="token", layers=[0, 3]
    )
    images = torch.randn(2, 3, 64, 64)
    bb = model.backbone
    with torch.no_grad():
        embedded = bb._pos_embed(bb.patch_embed(images)).mean(dim=(0, 1))
    model(images)  # a forward alone initialises nothing: the init is an explicit step of training
    assert bb.blocks[0].attn.prompt.abs().max() == 0
    model.method.init_from_data(model, images)
    for i in (0, 3):  # L == D: every row is exactly the mean token, as in the official code
        torch.testing.assert_close(bb.blocks[i].attn.prompt, embedded.expand(17, -1))
    model.method.init_from_data(model, torch.randn(2, 3, 64, 64))  # once only
    torch.testing.assert_close(bb.blocks[0].attn.prompt, embedded.expand(17, -1))


def test_ept_input_size_mismatch_is_explained():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, dynamic_img_size=True)
    model = build_model("ept", vit, 3)
    with pytest.raises(ValueError, match="build the model with the img_size"):
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "kernel, dtype",
    [(_CUDA_EFFICIENT, torch.float32), (_CUDA_FLASH, torch.bfloat16), (None, torch.float32), (None, torch.bfloat16)],
)
def test_cuda_null_key_kernels_equal_materialised_softmax(kernel, dtype):
    """Both CUDA log-sum-exp kernels (and the extra-channel path, None) against a float64 materialised reference."""
    torch.manual_seed(0)
    B, H, N, d = 3, 4, 197, 64
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    logit = torch.randn(B, H, N, device="cuda", requires_grad=True)
    scale = d**-0.5
    q64, k64, v64, logit64 = (t.detach().double().requires_grad_() for t in (q, k, v, logit))
    expected = torch.cat([logit64[..., None], q64 @ k64.transpose(-2, -1) * scale], -1).softmax(-1)[..., 1:] @ v64
    dy = torch.randn_like(expected)
    grads_expected = torch.autograd.grad(expected, (q64, k64, v64, logit64), dy)
    if kernel is not None:
        assert _lse_kernel(q, 0.0) is kernel
        out = _ScaledFusedAttention.apply(q, k, v, logit, scale, kernel)
    else:
        out = _extra_channel_attention(q, k, v, logit, scale)
    grads = torch.autograd.grad(out, (q, k, v, logit), dy.to(dtype))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4  # relative to the norm
    for ours, theirs in zip((out, *grads), (expected, *grads_expected)):
        assert (ours.double() - theirs).norm() / theirs.norm() < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("way", ["concat", "multiply_concat", "add"])
def test_ept_on_cuda_equals_naive_eq5(way):
    """The fused CUDA path (extra-channel SDPA on the flash/efficient kernels) against Eq. 5, fp32 and bf16."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=96).cuda()
    reference = copy.deepcopy(vit)
    model = build_model("ept", vit, 3, way=way, prompt_length=7).cuda()
    with torch.no_grad():
        for p in prompts_of(model).values():
            p.add_(torch.randn_like(p))
    images = torch.randn(4, 3, 96, 96, device="cuda")
    ours = model.forward_features(images)
    theirs = naive_ept_features(reference, prompts_of(model), way, images)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    prompts = list(prompts_of(model).values())
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours.square().sum(), prompts), torch.autograd.grad(theirs.square().sum(), prompts)
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = model.forward_features(images).float()
    assert (low - theirs).norm() / theirs.norm() < 0.03
