"""What only the EVA family has (the shared checks are in test_families.py): separate q, k, v projections, and
local weights through timm's EVA checkpoint filter."""

import copy

import timm
import torch
from family_models import EVA, C, eva

from medpeft import build_model, count_parameters


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


def test_local_weights_load_through_the_eva_filter(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(EVA, num_classes=0, img_size=56).eval()
    torch.save(source.state_dict(), tmp_path / "eva.pth")
    model = build_model("linear", EVA, C, weights=tmp_path / "eva.pth", img_size=56).eval()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), source(images), rtol=0, atol=1e-5)
