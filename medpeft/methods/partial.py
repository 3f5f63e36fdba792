"""Partial-k: the last k blocks and the final norm train."""

from __future__ import annotations

from dataclasses import dataclass, field

from .registry import register
from .base import Method


@register
@dataclass
class Partial(Method):
    """Unfreeze the last ``k`` transformer blocks and the final LayerNorm."""

    name = "partial"
    k: int = field(default=1, metadata={"min": 1})

    def inject(self, backbone):
        depth = len(backbone.blocks)
        if self.k > depth:
            raise self.option_error("k", f"exceeds the backbone depth {depth}")
        for block in backbone.blocks[depth - self.k:]:
            block.requires_grad_(True)
        backbone.norm.requires_grad_(True)

    def frozen_stages(self, backbone):
        return len(backbone.blocks) - self.k
