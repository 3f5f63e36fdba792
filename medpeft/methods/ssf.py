"""SSF: scale-and-shift of deep features (Lian et al., NeurIPS 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import register
from .base import Method


class ScaleShift(nn.Module):
    """``base_layer(x) · γ + β`` over the last dimension; γ = 1, β = 0 at the start (the frozen output)."""

    def __init__(self, base_layer: nn.Module, dim: int):
        super().__init__()
        self.base_layer = base_layer
        self.ssf_scale = nn.Parameter(torch.ones(dim))
        self.ssf_shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.base_layer(x) * self.ssf_scale + self.ssf_shift


@register
@dataclass
class SSF(Method):
    """γ, β after every operation of the ViT: patch embedding, each LayerNorm, qkv, proj, fc1, fc2, final norm.

    Initialised to the identity (γ = 1, β = 0) rather than the paper's N(1, 0.02), N(0, 0.02), so the model
    starts as the frozen backbone.
    """

    name = "ssf"

    def inject(self, backbone):
        pe = backbone.patch_embed
        pe.norm = ScaleShift(pe.norm, backbone.embed_dim)
        for block in backbone.blocks:
            attn, mlp = block.attn, block.mlp
            block.norm1 = ScaleShift(block.norm1, backbone.embed_dim)
            block.norm2 = ScaleShift(block.norm2, backbone.embed_dim)
            attn.qkv = ScaleShift(attn.qkv, attn.qkv.out_features)
            attn.proj = ScaleShift(attn.proj, attn.proj.out_features)
            mlp.fc1 = ScaleShift(mlp.fc1, mlp.fc1.out_features)
            mlp.fc2 = ScaleShift(mlp.fc2, mlp.fc2.out_features)
        backbone.norm = ScaleShift(backbone.norm, backbone.embed_dim)
