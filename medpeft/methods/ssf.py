"""SSF: scale-and-shift of deep features (Lian et al., NeurIPS 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import RmsNorm
from torch import nn

from ..families import family_of
from .base import Method
from .registry import register


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
    """γ, β after every operation of the backbone: the patch embedding, every Linear and normalisation layer of the
    blocks (ViT: norm1, qkv, proj, norm2, fc1, fc2; also Swin's patch merging, EVA's SwiGLU and inner norms) and the
    final norm.

    Initialised to the identity (γ = 1, β = 0) rather than the paper's N(1, 0.02), N(0, 0.02), so the model
    starts as the frozen backbone. EVA's and BEiT's q/v biases are added after the qkv Linear, so after its γ, β.
    """

    name = "ssf"

    def inject(self, backbone):
        family = family_of(backbone)
        owner, attr = family.patch_embed_output()
        setattr(owner, attr, ScaleShift(getattr(owner, attr), family.dim(0)))
        for i in range(family.depth):
            for module in family.block_modules(i):
                for parent, name, layer in _operations(module):
                    setattr(parent, name, ScaleShift(layer, _width(layer)))
        for name in family.final_norms():
            setattr(backbone, name, ScaleShift(getattr(backbone, name), family.feature_dim))


def _operations(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of every Linear and normalisation layer inside ``module``."""
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Linear, nn.LayerNorm, RmsNorm)):
                found.append((parent, name, child))
    return found


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.normalized_shape[-1]
