"""EPT: Embedded Prompt Tuning (Zu et al., Medical Image Analysis 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..attention import INITS, WAYS, EmbeddedPromptAttention, TokenInit
from ..backbones import num_tokens
from ..errors import UserError
from . import register
from .base import Method


@register
@dataclass
class EPT(Method):
    """A prompt of ``prompt_length`` columns embedded in the attention logits of the chosen blocks.

    ``layers``: block indices (negative counts from the end), None for all (EPT-deep); ``[0]`` is EPT-shallow.
    ``way``: concat (default), multiply_concat, add, multiply (see :class:`EmbeddedPromptAttention`).
    ``init``: normal(0.02) (default), uniform(±0.08), zero, kaiming, token; for the concat ways only — add
    starts at 0 and multiply at 1, the frozen model. The prompt has one row per token at the model's image size.
    """

    name = "ept"
    prompt_length: int = 100
    layers: list[int] | None = None
    way: str = field(default="concat", metadata={"choices": WAYS})
    init: str | None = field(default=None, metadata={"choices": INITS + (None,)})

    def inject(self, backbone):
        if self.prompt_length < 1:
            raise UserError(f"method 'ept': prompt_length={self.prompt_length} must be at least 1")
        if self.init is not None and self.way not in ("concat", "multiply_concat"):
            raise UserError(f"method 'ept': init applies to the concat ways; way={self.way!r} starts at the frozen model")
        attentions = []
        for i in resolve_layers(self.layers, len(backbone.blocks)):
            block = backbone.blocks[i]
            block.attn = EmbeddedPromptAttention(block.attn, num_tokens(backbone), self.prompt_length, self.way,
                                                 self.init)
            attentions.append(block.attn)
        if self.init == "token":
            hook = TokenInit(attentions)
            hook.handle = backbone.norm_pre.register_forward_hook(hook)


def resolve_layers(layers: list[int] | None, depth: int) -> list[int]:
    """Block indices in [0, depth), in the given order; None means every block."""
    if layers is None:
        return list(range(depth))
    if not layers or any(not -depth <= i < depth for i in layers):
        raise UserError(f"method 'ept': layers={layers} must be a non-empty list of block indices in [-{depth}, {depth})")
    resolved = [i % depth for i in layers]
    if len(set(resolved)) != len(resolved):
        raise UserError(f"method 'ept': layers={layers} names a block twice")
    return resolved
