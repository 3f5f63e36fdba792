"""BitFit: every bias of the backbone trains (Ben Zaken et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .base import Method


@register
@dataclass
class BitFit(Method):
    """Unfreeze every bias: attention (qkv, proj), MLP, LayerNorms and the patch embedding."""

    name = "bitfit"

    def inject(self, backbone):
        for name, param in backbone.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)
