"""Partial-k: the last k blocks and the final norm train."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import register
from .base import Method


@register
@dataclass
class Partial(Method):
    """Unfreeze the last ``k`` transformer blocks and the final LayerNorm."""

    name = "partial"
    k: int = 1

    def inject(self, backbone):
        depth = len(backbone.blocks)
        if not 1 <= self.k <= depth:
            raise UserError(f"method 'partial': k={self.k} must be between 1 and the backbone depth {depth}")
        for block in backbone.blocks[depth - self.k:]:
            block.requires_grad_(True)
        backbone.norm.requires_grad_(True)
