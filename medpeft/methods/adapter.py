"""AdaptFormer: a parallel bottleneck adapter beside every MLP (Chen et al., 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from ..families import family_of
from .base import Method
from .registry import register


class ParallelAdapter(nn.Module):
    """``ls(mlp(norm(x))) + scale · up(relu(down(x)))``: the adapter reads the block's post-attention stream ``x``.

    It replaces the block's ``mlp`` and takes over its norm and layer scale (the family's
    :meth:`~medpeft.families.Family.set_mlp_branch`: both become identities in the block), so the adapter sees the
    un-normalised residual stream as in AdaptFormer and runs parallel to the whole MLP branch. On LayerScale blocks
    (DINOv2, EVA, BEiT) its output is therefore *not* multiplied by the frozen γ₂, whose tiny values (~1e-5 at init,
    often < 0.1 trained) would crush it; on plain ViT blocks ``ls`` is an identity and nothing changes. ``up``
    starts at zero, so before training the block's output is the frozen one.
    """

    def __init__(
        self, norm: nn.Module, mlp: nn.Module, dim: int, bottleneck: int, scale: float, ls: nn.Module | None = None
    ):
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.ls = ls if ls is not None else nn.Identity()
        self.scale = scale
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.adapter_up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.adapter_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x):
        return self.ls(self.mlp(self.norm(x))) + self.scale * self.adapter_up(self.adapter_down(x).relu())


@register
@dataclass
class Adapter(Method):
    """A down-ReLU-up bottleneck beside each block's MLP branch, output × ``scale``.

    Its width is ``bottleneck`` (default 64), or the block's width D divided by ``reduction`` (the paper's grid
    {1, 4, 8, 32, 64} is of reductions: 768 / 8 = 96 on ViT-B; on Swin D is the stage's width); give one of the two.
    """

    name = "adapter"
    bottleneck: int | None = field(default=None, metadata={"min": 1})
    reduction: int | None = field(default=None, metadata={"min": 1})
    scale: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.bottleneck is not None and self.reduction is not None:
            raise self.option_error("reduction", f"and bottleneck={self.bottleneck} both set the width: give one")

    def width(self, dim: int) -> int:
        if self.reduction is not None:
            return max(dim // self.reduction, 1)
        return self.bottleneck or 64

    def inject(self, backbone):
        family = family_of(backbone)
        for i, block in enumerate(family.blocks()):
            norm, mlp, layer_scale = family.mlp_branch(block)
            dim = family.dim(i)
            family.set_mlp_branch(block, ParallelAdapter(norm, mlp, dim, self.width(dim), self.scale, layer_scale))
