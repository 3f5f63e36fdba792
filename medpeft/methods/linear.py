"""Linear probing: only the head trains."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .base import Method


@register
@dataclass
class Linear(Method):
    """The frozen backbone's pooled CLS feature feeds a trainable linear head."""

    name = "linear"

    def frozen_stages(self, backbone):
        return len(backbone.blocks) + 1
