"""VP: a learnable border added to the input image (Bahng et al., 2022, "pad prompter")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import Method
from .registry import register


class PadPrompter(nn.Module):
    """Adds a learnable frame of width ``prompt_size`` to the image, then runs the patch projection ``proj``.

    It wraps the patch embedding's convolution, the first layer that sees pixels; the border's interior is
    zero, so only pixels within ``prompt_size`` of an edge change.
    """

    def __init__(self, proj: nn.Module, img_size: tuple[int, int], prompt_size: int):
        super().__init__()
        height, width = img_size
        self.proj = proj
        self.prompt_up = nn.Parameter(torch.randn(1, 3, prompt_size, width))
        self.prompt_down = nn.Parameter(torch.randn(1, 3, prompt_size, width))
        self.prompt_left = nn.Parameter(torch.randn(1, 3, height - 2 * prompt_size, prompt_size))
        self.prompt_right = nn.Parameter(torch.randn(1, 3, height - 2 * prompt_size, prompt_size))
        self.register_buffer(
            "interior", torch.zeros(1, 3, height - 2 * prompt_size, width - 2 * prompt_size), persistent=False
        )

    def border(self) -> torch.Tensor:
        middle = torch.cat([self.prompt_left, self.interior, self.prompt_right], dim=3)
        return torch.cat([self.prompt_up, middle, self.prompt_down], dim=2)

    def forward(self, x):
        return self.proj(x + self.border())


@register
@dataclass
class VP(Method):
    """A border of width ``prompt_size`` pixels around the (normalised) image is learned; the backbone is frozen."""

    name = "vp"
    prompt_size: int = field(default=30, metadata={"min": 1})

    def inject(self, backbone):
        height, width = backbone.patch_embed.img_size
        if self.prompt_size >= min(height, width) / 2:
            raise self.option_error("prompt_size", f"must be below half the image size ({min(height, width)} px)")
        backbone.patch_embed.proj = PadPrompter(backbone.patch_embed.proj, (height, width), self.prompt_size)
