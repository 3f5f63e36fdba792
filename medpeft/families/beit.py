"""timm's ``Beit``: BEiT and BEiT v2 (relative position bias per block or shared, LayerScale γ)."""

from __future__ import annotations

import torch
from timm.models.beit import Beit, checkpoint_filter_fn

from .base import ExtraTokenAttention, register, relative_position_bias
from .layerscale import LayerScaleFamily


@register
class BeitFamily(LayerScaleFamily):
    """Pre-norm blocks in ``blocks`` on [CLS, patches]; each attention adds a relative position bias (its own table,
    with rows for CLS, and/or the model's shared one) to QKᵀ/√d; LayerScale as γ vectors on the block. The head
    reads the model's ``global_pool`` feature (``avg``: the mean of the patch tokens, then ``fc_norm``; ``token``:
    the CLS token after ``norm``).
    """

    name = "beit"
    model_class = Beit
    example = "beit_base_patch16_224"
    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    def embed(self, images):
        m = self.model
        x = m.patch_embed(images)
        x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if m.pos_embed is not None:
            x = x + m.pos_embed
        return m.pos_drop(x)

    def block_kwargs(self, i):
        shared = self.model.rel_pos_bias
        return {"shared_rel_pos_bias": None if shared is None else shared()}

    def insert_tokens(self, n):
        for block in self.blocks():
            block.attn = ExtraTokenAttention(block.attn, type(self), self.num_prefix_tokens, n)

    @staticmethod
    def logit_bias(attn, shared_rel_pos_bias=None):
        bias = None if attn.relative_position_bias_table is None else relative_position_bias(attn)
        if shared_rel_pos_bias is not None:  # (heads, N, N)
            shared = shared_rel_pos_bias.unsqueeze(0)
            bias = shared if bias is None else bias + shared
        return bias
