"""EPT: Embedded Prompt Tuning (Zu et al., Medical Image Analysis 2024).

The method (this module), its prompted attention (:mod:`.attention`) and the fused kernels behind it
(:mod:`.kernels`). Nothing outside this package knows EPT: training, checkpoints and the analysis reach it through
the :class:`~medpeft.methods.base.Method` hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import UserError
from ...families import family_of
from ..base import Method, TokenMaps
from ..registry import register
from .attention import CONCAT_WAYS, INITS, WAYS, EmbeddedPromptAttention


@register
@dataclass
class EPT(Method):
    """A prompt of ``prompt_length`` columns embedded in the attention logits of the chosen blocks.

    ``layers``: block indices (negative counts from the end), None for all (EPT-deep); ``[0]`` is EPT-shallow.
    ``way``: concat (default), multiply_concat, add, multiply (see :class:`EmbeddedPromptAttention`).
    ``init``: normal(0.02) (default), uniform(±0.08), zero, kaiming, token; for the concat ways only — add
    starts at 0 and multiply at 1, the frozen model. The prompt has one row per token of its block at the model's
    image size (CLS and registers included; on Swin, the tokens of the block's stage).
    ``train_prompt=False`` keeps the prompts at their initialisation (frozen; the paper's "prompt gradient off").
    ``fused=False`` materialises the logits as the official code (a reference; same function, more memory).
    """

    name = "ept"
    prompt_length: int = field(default=100, metadata={"min": 1})
    layers: list[int] | None = None
    way: str = field(default="concat", metadata={"choices": WAYS})
    init: str | None = field(default=None, metadata={"choices": INITS + (None,)})
    train_prompt: bool = True
    fused: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.init is not None and self.way not in CONCAT_WAYS:
            raise self.option_error("init", f"applies to the concat ways; way={self.way!r} starts at the frozen model")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise self.option_error("layers", "must be a non-empty list of distinct block indices")

    def inject(self, backbone):
        family = family_of(backbone)
        blocks = family.blocks()
        for i in resolve_layers(self.layers, family.depth):
            block = blocks[i]
            block.attn = EmbeddedPromptAttention(
                block.attn,
                type(family),
                family.tokens(i),
                self.prompt_length,
                self.way,
                self.init,
                self.fused,
                family.token_index(i),
            )
            block.attn.prompt.requires_grad_(self.train_prompt)

    def init_from_data(self, model, images):
        """The ``token`` init: the mean over batch and tokens of the embedded first batch (after the position
        embedding: what the first block receives), added to every prompt row as the official code."""
        waiting = [a for a in _attentions(model) if a.awaiting_token]
        if not waiting:
            return
        with torch.no_grad():
            tokens = family_of(model.backbone).embed(images)
            mean = tokens.float().mean(dim=tuple(range(tokens.dim() - 1)))
        for attn in waiting:
            attn.add_token(mean)

    def after_load(self, model):
        for attn in _attentions(model):
            attn.awaiting_token = False

    def prepare_export(self, model):
        """The concat ways' extra key through plain SDPA (an extra query channel; the exporter writes MatMul and
        Softmax) instead of the fused kernels' log-sum-exp output, which an autograd Function reads."""
        for attn in _attentions(model):
            attn.lse_kernels = False

    def token_maps(self, model):
        family = family_of(model.backbone)

        def probe(i, attn):
            return lambda x: family.on_patch_grid(
                i, attn.patch_scaling(x, **family.attention_kwargs(i)).float().mean(dim=1)
            )

        probes = {i: (attn, probe(i, attn)) for i, attn in _concat_attentions(family).items()}
        if not probes:
            return None
        return TokenMaps("patch_scaling", "patch-wise scaling $s_j = Z_j / (Z_j + \\sum_l e^{P_{jl}})$", probes)

    def prompt_mass(self, model):
        """The concat ways' prompt columns take 1 − s_j of row j's softmax mass (:meth:`token_maps`' s_j)."""
        family = family_of(model.backbone)

        def probe(i, attn):
            return lambda x: 1 - attn.patch_scaling(x, **family.attention_kwargs(i)).float()

        return {i: (attn, probe(i, attn)) for i, attn in _concat_attentions(family).items()}


def _concat_attentions(family) -> dict[int, EmbeddedPromptAttention]:
    """The prompted attentions of the concat ways by block index."""
    return {
        i: block.attn
        for i, block in enumerate(family.blocks())
        if isinstance(block.attn, EmbeddedPromptAttention) and block.attn.way in CONCAT_WAYS
    }


def _attentions(model) -> list[EmbeddedPromptAttention]:
    return [m for m in model.modules() if isinstance(m, EmbeddedPromptAttention)]


def resolve_layers(layers: list[int] | None, depth: int) -> list[int]:
    """Block indices in [0, depth), in the given order; None means every block."""
    if layers is None:
        return list(range(depth))
    if any(not -depth <= i < depth for i in layers):
        raise UserError(f"method 'ept': option layers={layers} must hold block indices in [-{depth}, {depth})")
    resolved = [i % depth for i in layers]
    if len(set(resolved)) != len(resolved):
        raise UserError(f"method 'ept': option layers={layers} names a block twice")
    return resolved
