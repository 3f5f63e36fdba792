"""VPT: learnable prompt tokens inserted after the prefix tokens (Jia et al., 2022)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Method


class PromptTokens(nn.Module):
    """VPT's prompts (1 or depth, L, D) and the block hooks that place them in the token sequence.

    Before the first block the prompts are inserted after the prefix tokens (CLS and any registers); deep prompts
    replace them before every later block; after the last block they are dropped. The blocks themselves are not
    touched, so anything that runs them one by one (timm's gradient checkpointing, ``forward_intermediates``) sees
    the prompts too.
    """

    def __init__(self, depth: int, prompt_length: int, dim: int, num_prefix: int, dropout: float, init_bound: float):
        super().__init__()
        self.num_prefix = num_prefix
        self.dropout = dropout
        self.prompt = nn.Parameter(torch.empty(depth, prompt_length, dim))
        nn.init.uniform_(self.prompt, -init_bound, init_bound)

    def attach(self, blocks: nn.Sequential) -> None:
        """Hook the blocks (bound methods, so a deep copy of the model hooks its own copy of the prompts)."""
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(functools.partial(self._before, i))
        blocks[-1].register_forward_hook(self._after)

    def _before(self, block: int, module, args):
        return (self.place(args[0], block), *args[1:])

    def _after(self, module, args, output):
        return self.drop(output)

    def place(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s input with its prompts in place (inserted before block 0, replaced by deep prompts)."""
        if block > 0 and block >= self.prompt.shape[0]:
            return x
        n, length = self.num_prefix, self.prompt.shape[1]
        prompt = self.prompt[block]
        if self.dropout and self.training:
            prompt = F.dropout(prompt, self.dropout, True)
        prompt = prompt.expand(x.shape[0], -1, -1).to(x.dtype)
        rest = x[:, n:] if block == 0 else x[:, n + length:]
        return torch.cat([x[:, :n], prompt, rest], dim=1)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        n, length = self.num_prefix, self.prompt.shape[1]
        return torch.cat([x[:, :n], x[:, n + length:]], dim=1)


@register
@dataclass
class VPT(Method):
    """``prompt_length`` prompt tokens after the prefix tokens (no position embedding); ``deep`` gives every block
    its own. Initialised uniform ±√(6 / (3·p² + D)) for patch size p, as the official code. ``train_prompt=False``
    keeps them at their initialisation (frozen; the paper's "VPT-F")."""

    name = "vpt"
    prompt_length: int = field(default=10, metadata={"min": 1})
    deep: bool = True
    dropout: float = field(default=0.0, metadata={"min": 0.0})
    train_prompt: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.dropout >= 1:
            raise self.option_error("dropout", "must be below 1")

    def inject(self, backbone):
        patch_h, patch_w = backbone.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + backbone.embed_dim))
        prompts = PromptTokens(len(backbone.blocks) if self.deep else 1, self.prompt_length, backbone.embed_dim,
                               backbone.num_prefix_tokens, self.dropout, bound)
        prompts.prompt.requires_grad_(self.train_prompt)
        backbone.prompt_tokens = prompts
        prompts.attach(backbone.blocks)
