"""VPT: learnable prompt tokens inserted after the prefix tokens (Jia et al., 2022)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..families import family_of
from .base import Method
from .registry import register


class PromptTokens(nn.Module):
    """VPT's prompts and the block hooks that place them in the token sequence.

    ``stages`` lists (blocks, width) per stage. ``prompt`` (1, or deep: the first stage's blocks, L, D) holds the
    prompts of the first stage, ``stage_prompts`` (deep only) one tensor per later stage (Swin's stages are wider).
    Before the first block the prompts are inserted after the prefix tokens (CLS and any registers); deep prompts
    replace them before every later block; after the last block they are dropped. Blocks on (B, H, W, C) grids
    (``out_grid``: the last block's grid) get their tokens as a (B, H·W, C) sequence with the prompts, and the last
    block's output goes back to the grid. The prompts come and go through hooks on the blocks (the family has let its
    blocks carry extra tokens: :meth:`~medpeft.families.Family.insert_tokens`), so anything that runs the blocks one
    by one (timm's gradient checkpointing, ``forward_intermediates``) sees them too.
    """

    def __init__(
        self,
        stages: list[tuple[int, int]],
        prompt_length: int,
        num_prefix: int,
        deep: bool,
        dropout: float,
        init_bound: float,
        out_grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.num_prefix = num_prefix
        self.dropout = dropout
        self.out_grid = out_grid
        (first_blocks, first_dim), later = stages[0], stages[1:] if deep else []
        self.prompt = nn.Parameter(torch.empty(first_blocks if deep else 1, prompt_length, first_dim))
        self.stage_prompts = nn.ParameterList([torch.empty(blocks, prompt_length, dim) for blocks, dim in later])
        for prompt in self.stages():
            nn.init.uniform_(prompt, -init_bound, init_bound)
        self.starts = [sum(blocks for blocks, _ in stages[:s]) for s in range(len(stages))]

    def stages(self) -> list[nn.Parameter]:
        """The prompt tensors, one per stage that has its own."""
        return [self.prompt, *self.stage_prompts]

    def attach(self, blocks: list[nn.Module]) -> None:
        """Hook the blocks (bound methods, so a deep copy of the model hooks its own copy of the prompts)."""
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(functools.partial(self._before, i))
        blocks[-1].register_forward_hook(self._after)

    def _before(self, block: int, module, args):
        return (self.place(args[0], block), *args[1:])

    def _after(self, module, args, output):
        return self.drop(output)

    def prompt_of(self, block: int) -> torch.Tensor | None:
        """The prompts placed before block ``block`` (None: the block keeps the tokens it receives)."""
        stage = max(s for s, start in enumerate(self.starts) if start <= block)
        prompts = self.stages()
        if stage >= len(prompts) or block - self.starts[stage] >= prompts[stage].shape[0]:
            return None
        return prompts[stage][block - self.starts[stage]]

    def place(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s input with its prompts in place (inserted before block 0, replaced by deep prompts)."""
        if block == 0 and self.out_grid is not None:
            x = x.flatten(1, 2)
        prompt = self.prompt_of(block)
        if prompt is None:
            return x
        n, length = self.num_prefix, prompt.shape[0]
        if self.dropout and self.training:
            prompt = F.dropout(prompt, self.dropout, True)
        prompt = prompt.expand(x.shape[0], -1, -1).to(x.dtype)
        rest = x[:, n:] if block == 0 else x[:, n + length :]
        return torch.cat([x[:, :n], prompt, rest], dim=1)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        n, length = self.num_prefix, self.prompt.shape[1]
        x = torch.cat([x[:, :n], x[:, n + length :]], dim=1)
        return x if self.out_grid is None else x.reshape(x.shape[0], *self.out_grid, x.shape[-1])


@register
@dataclass
class VPT(Method):
    """``prompt_length`` prompt tokens after the prefix tokens (no position embedding: no rotary position on EVA, no
    relative position bias on BEiT); ``deep`` gives every block its own. On Swin they join every window of their
    stage and pass the patch merging (:meth:`~medpeft.families.swin.SwinFamily.insert_tokens`); deep prompts there have
    their stage's width. Initialised uniform ±√(6 / (3·p² + D)) for patch size p and the first blocks' width D, as
    the official code. ``train_prompt=False`` keeps them at their initialisation (frozen; the paper's "VPT-F")."""

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
        family = family_of(backbone)
        patch_h, patch_w = backbone.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + family.dim(0)))
        stage_of = [family.stage_of(i) for i in range(family.depth)]
        stages = [(stage_of.count(s), family.dim(stage_of.index(s))) for s in sorted(set(stage_of))]
        family.insert_tokens(self.prompt_length)
        prompts = PromptTokens(
            stages,
            self.prompt_length,
            family.num_prefix_tokens,
            self.deep,
            self.dropout,
            bound,
            family.grid(family.depth - 1) if family.spatial else None,
        )
        prompts.requires_grad_(self.train_prompt)
        backbone.prompt_tokens = prompts
        prompts.attach(family.blocks())
