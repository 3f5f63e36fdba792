"""timm's ``Eva``: EVA, EVA-02 and the RoPE ViTs (rotary position, SwiGLU MLPs, registers, LayerScale γ)."""

from __future__ import annotations

import torch
from timm.layers import apply_rot_embed_cat
from timm.models.eva import Eva, checkpoint_filter_fn

from .base import Family, register
from .layerscale import LayerScaleFamily


@register
class EvaFamily(LayerScaleFamily):
    """Pre-norm blocks in ``blocks``; every block gets the rotary embedding of the patch grid (prefix tokens, and
    tokens a method adds after them, are not rotated); LayerScale as γ vectors on the block (``gamma_1``,
    ``gamma_2``). The head reads the model's ``global_pool`` feature (EVA-02: the mean of the patch tokens, then
    ``fc_norm``; ``token``: the CLS token after ``norm``).
    """

    name = "eva"
    model_class = Eva
    example = "eva02_tiny_patch14_224"
    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    def embed(self, images):
        m = self.model
        x, _ = m._pos_embed(m.patch_embed(images))
        return m.norm_pre(x)

    def block_kwargs(self, i):
        m = self.model
        if m.rope is None:
            return {"rope": None}
        rope = m.rope.get_embed() if hasattr(m.rope, "feat_shape") else m.rope.get_embed(shape=self.patch_grid)
        return {"rope": rope[i] if m.rope_mixed else rope}

    def insert_tokens(self, n):
        for block in self.blocks():
            block.attn.num_prefix_tokens += n

    @staticmethod
    def qkv(attn, x, rope=None, attn_mask=None, is_causal=False):
        """EvaAttention / AttentionRope: fused or separate projections, q/v biases, q/k norms, rotary embedding of
        the tokens after the prefix, grouped key/value heads."""
        if attn_mask is not None or is_causal:
            raise NotImplementedError("a wrapped EVA attention does not take an attention mask")
        if attn.qkv is not None:
            q, k, v = Family.qkv(attn, x)
        else:
            B, N, _ = x.shape
            kv_heads = getattr(attn, "num_kv_heads", attn.num_heads)
            q = attn.q_proj(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
            k = attn.k_proj(x).reshape(B, N, kv_heads, -1).transpose(1, 2)
            v = attn.v_proj(x).reshape(B, N, kv_heads, -1).transpose(1, 2)
            q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            n, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
            q = torch.cat([q[:, :, :n], apply_rot_embed_cat(q[:, :, n:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :n], apply_rot_embed_cat(k[:, :, n:], rope, half=half)], dim=2).type_as(v)
        groups = getattr(attn, "num_kv_groups", 1)
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return q, k, v
