"""MLP-k: a k-layer MLP head on the frozen feature."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..families import family_of
from .base import Method, linear_head
from .registry import register


@register
@dataclass
class MLP(Method):
    """The head is ``k - 1`` hidden Linear+ReLU layers of the feature width, then the linear classifier."""

    name = "mlp"
    k: int = field(default=3, metadata={"min": 1})

    def make_head(self, in_features, num_classes):
        hidden = [m for _ in range(self.k - 1) for m in (nn.Linear(in_features, in_features), nn.ReLU())]
        return nn.Sequential(*hidden, linear_head(in_features, num_classes))

    def frozen_stages(self, backbone):
        return family_of(backbone).depth + 1
