"""BitFit: every bias of the backbone trains (Ben Zaken et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method
from .registry import register


@register
@dataclass
class BitFit(Method):
    """Unfreeze every bias: attention (qkv, or EVA's and BEiT's separate q/v biases; proj), MLP, LayerNorms, patch
    embedding (and Swin's patch merging norms). Relative position tables and LayerScale γ are no biases."""

    name = "bitfit"

    def inject(self, backbone):
        for name, param in backbone.named_parameters():
            if name.endswith((".bias", "_bias")):
                param.requires_grad_(True)
