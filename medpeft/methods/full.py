"""Full fine-tuning: every backbone tensor trains."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method
from .registry import register


@register
@dataclass
class Full(Method):
    """Every parameter of the backbone trains, plus the linear head."""

    name = "full"

    def inject(self, backbone):
        backbone.requires_grad_(True)
