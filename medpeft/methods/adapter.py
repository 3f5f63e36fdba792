"""AdaptFormer: a parallel bottleneck adapter beside every MLP (Chen et al., 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from . import register
from .base import Method


class ParallelAdapter(nn.Module):
    """``mlp(norm(x)) + scale · up(relu(down(x)))``: the adapter reads the block's post-attention stream ``x``.

    It replaces the block's ``mlp`` and takes over its ``norm2`` (the block's own ``norm2`` becomes an
    identity), so the adapter sees the un-normalised residual stream as in AdaptFormer. ``up`` starts at
    zero, so before training the block's output is the frozen one.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, dim: int, bottleneck: int, scale: float):
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.scale = scale
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.adapter_up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.adapter_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x):
        return self.mlp(self.norm(x)) + self.scale * self.adapter_up(self.adapter_down(x).relu())


@register
@dataclass
class Adapter(Method):
    """A down-ReLU-up bottleneck of width ``bottleneck`` in parallel with each block's MLP, output × ``scale``."""

    name = "adapter"
    bottleneck: int = field(default=64, metadata={"min": 1})
    scale: float = 0.1

    def inject(self, backbone):
        for block in backbone.blocks:
            block.mlp = ParallelAdapter(block.norm2, block.mlp, backbone.embed_dim, self.bottleneck, self.scale)
            block.norm2 = nn.Identity()
