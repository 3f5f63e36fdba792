"""VPT: learnable prompt tokens inserted after the CLS token (Jia et al., 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from . import register
from .base import Method


class PromptedBlocks(nn.Sequential):
    """The backbone's blocks, run over ``[prefix, prompts, patches]``; the prompts are dropped at the end.

    ``prompt`` is (1 or depth, L, D): shallow prompts are inserted once before the first block, deep ones
    replace the prompt tokens before every block. The blocks keep their names (``blocks.0`` …).
    """

    def __init__(self, blocks: nn.Sequential, prompt_length: int, dim: int, deep: bool, num_prefix: int,
                 dropout: float, init_bound: float):
        super().__init__(*blocks)
        self.num_prefix = num_prefix
        self.dropout = dropout
        self.prompt = nn.Parameter(torch.empty(len(blocks) if deep else 1, prompt_length, dim))
        nn.init.uniform_(self.prompt, -init_bound, init_bound)

    def forward(self, x):
        prompts = F.dropout(self.prompt, self.dropout, self.training).expand(x.shape[0], -1, -1, -1)
        n, length = self.num_prefix, self.prompt.shape[1]
        x = torch.cat([x[:, :n], prompts[:, 0], x[:, n:]], dim=1)
        for i, block in enumerate(self):
            if 0 < i < prompts.shape[1]:
                x = torch.cat([x[:, :n], prompts[:, i], x[:, n + length:]], dim=1)
            x = block(x)
        return torch.cat([x[:, :n], x[:, n + length:]], dim=1)


@register
@dataclass
class VPT(Method):
    """``prompt_length`` prompt tokens after CLS (no position embedding); ``deep`` gives every block its own.

    Initialised uniform ±√(6 / (3·p² + D)) for patch size p, as the official code.
    """

    name = "vpt"
    prompt_length: int = 10
    deep: bool = True
    dropout: float = 0.0

    def inject(self, backbone):
        if self.prompt_length < 1:
            raise UserError(f"method 'vpt': prompt_length={self.prompt_length} must be at least 1")
        patch_h, patch_w = backbone.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + backbone.embed_dim))
        backbone.blocks = PromptedBlocks(backbone.blocks, self.prompt_length, backbone.embed_dim, self.deep,
                                         backbone.num_prefix_tokens, self.dropout, bound)
