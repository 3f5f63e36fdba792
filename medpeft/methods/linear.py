"""Linear probing: only the head trains."""

from __future__ import annotations

from dataclasses import dataclass

from ..families import family_of
from .base import Method
from .registry import register


@register
@dataclass
class Linear(Method):
    """The frozen backbone's pooled CLS feature feeds a trainable linear head."""

    name = "linear"

    def frozen_stages(self, backbone):
        return family_of(backbone).depth + 1
