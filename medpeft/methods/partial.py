"""Partial-k: the last k blocks and the final norm train."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..families import family_of
from .base import Method
from .registry import register


@register
@dataclass
class Partial(Method):
    """Unfreeze the last ``k`` transformer blocks (counted across stages; a Swin block that starts a stage brings the
    patch merging before it) and the final norm."""

    name = "partial"
    k: int = field(default=1, metadata={"min": 1})

    def inject(self, backbone):
        family = family_of(backbone)
        depth = family.depth
        if self.k > depth:
            raise self.option_error("k", f"exceeds the backbone depth {depth}")
        for i in range(depth - self.k, depth):
            for module in family.block_modules(i):
                module.requires_grad_(True)
        for name in family.final_norms():
            getattr(backbone, name).requires_grad_(True)

    def frozen_stages(self, backbone):
        return family_of(backbone).depth - self.k
