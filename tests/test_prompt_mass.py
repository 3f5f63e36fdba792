"""The attention mass EPT's prompts absorb equals a direct computation from the materialised attention with the
prompt columns kept, on every family EPT supports."""

import numpy as np
import pytest
import timm
import torch

from medpeft import build_model
from medpeft.analysis import extract_features, prompt_mass
from medpeft.data import Samples, get_task
from medpeft.families import family_of

FAMILIES = {  # small random members of each family: (timm name, image size, timm kwargs)
    "vit": ("vit_tiny_patch16_224", 32, {"depth": 2}),
    "dinov2-registers": ("vit_small_patch14_reg4_dinov2", 28, {"depth": 2}),
    "swin": ("swin_tiny_patch4_window7_224", 64, {"embed_dim": 24, "depths": (2, 2), "num_heads": (2, 4)}),
    "eva": ("eva02_tiny_patch14_224", 28, {"depth": 2}),
    "beit": ("beit_base_patch16_224", 32, {"depth": 2, "embed_dim": 64, "num_heads": 2}),
}


def direct_mass(attn, x, **kwargs):
    """Softmax over [P | S] with the prompt columns kept; their summed weight per (image, head, token row)."""
    q, k, _ = attn.family.qkv(attn, x, **kwargs)
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    for extra in (attn.family.logit_bias(attn, **kwargs), attn.family.logit_mask(attn, x.shape[0], **kwargs)):
        if extra is not None:
            logits = logits + extra
    prompt = attn._rows(attn.prompt, q.shape[0])
    if attn.way == "multiply_concat":
        prompt = (
            attn._alpha(
                q, k, attn.family.logit_bias(attn, **kwargs), attn.family.logit_mask(attn, x.shape[0], **kwargs)
            )
            * prompt
        )
    L = attn.prompt.shape[-1]
    weights = torch.cat([prompt.expand(*logits.shape[:3], L), logits], dim=-1).softmax(dim=-1)
    share = weights[..., :L].sum(-1)  # (B or windows·B, H, rows)
    if attn.token_index is not None:  # window rows -> the block's tokens (rows on padding dropped)
        real = attn.token_index.reshape(-1) < attn.num_tokens
        windows, area = attn.token_index.shape
        share = (
            share.reshape(-1, windows, share.shape[1], area).transpose(1, 2).reshape(-1, share.shape[1], windows * area)
        )
        share = share[..., real]
    return share


@pytest.mark.parametrize("way", ["concat", "multiply_concat"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_mass_equals_the_materialised_attention(family, way):
    name, size, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    backbone = timm.create_model(name, num_classes=0, img_size=size, **kwargs).double()
    model = build_model("ept", backbone, 2, prompt_length=5, way=way, seed=0).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.shape[-1] == 5:  # the prompts, away from their near-zero init
                p.normal_(0, 1.5)
    fam = family_of(model.backbone)
    probes = model.method.prompt_mass(model)
    assert sorted(probes) == list(range(fam.depth))
    inputs = {}
    handles = [
        attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])) for i, (attn, _) in probes.items()
    ]
    images = torch.randn(3, 3, size, size, dtype=torch.double)
    with torch.no_grad():
        model.forward_features(images)
        for h in handles:
            h.remove()
        for i, (attn, fn) in probes.items():
            expected = direct_mass(attn, inputs[i], **fam.attention_kwargs(i))
            ours = fn(inputs[i]).double()
            assert 0.05 < float(expected.mean()) < 0.95
            if attn.token_index is not None:  # window order against token order: compare each row's values
                ours, expected = ours.sort(dim=-1).values, expected.sort(dim=-1).values
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_prompt_mass_summary_over_a_sample_set_and_at_length_1():
    """The analysis' per-block mean, min and max over images, heads and tokens; one prompt column of 0 takes
    1 / (1 + Z_j) of row j."""
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(5)]
    samples, task = Samples(list("abcde"), images, np.array([0, 1, 0, 1, 1])), get_task("colon")
    model = build_model(
        "ept",
        "vit_tiny_patch16_224",
        2,
        pretrained=False,
        img_size=32,
        prompt_length=1,
        init="zero",
        seed=0,
        layers=[0, 1],
    ).eval()
    shares = prompt_mass(model, samples, task, 32, batch_size=2)
    assert sorted(shares) == [0, 1]
    inputs = []
    handle = model.backbone.blocks[0].attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    extract_features(model, samples, task, 32)
    handle.remove()
    attn = model.backbone.blocks[0].attn
    x = torch.cat(inputs).double()
    B, N, D = x.shape
    qkv = torch.nn.functional.linear(x, attn.qkv.weight.double(), attn.qkv.bias.double())
    q, k, _ = qkv.reshape(B, N, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
    Z = ((q @ k.transpose(-2, -1)) * attn.scale).exp().sum(-1)
    expected = (1 / (1 + Z)).numpy()
    assert shares[0].mean == pytest.approx(expected.mean(), rel=1e-5)
    assert shares[0].min == pytest.approx(expected.min(), rel=1e-4)
    assert shares[0].max == pytest.approx(expected.max(), rel=1e-4)
    assert (
        prompt_mass(build_model("lora", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32), samples, task, 32)
        == {}
    )
    assert np.isfinite(shares[1].mean)
