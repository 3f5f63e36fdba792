"""timm's ``VisionTransformer``: plain ViTs, DINOv2 (LayerScale, registers), SigLIP/CLIP/GAP heads."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .base import Family, register


@register
class ViTFamily(Family):
    """Pre-norm blocks in ``blocks`` on (B, N, C) tokens: prefix tokens (CLS, registers), then the patches.

    The head reads the model's own pooled feature (``forward_head``: the CLS token after the final norm, or the
    GAP / attention-pool feature of such models). The final norm a method trains or wraps is ``norm``, or on a GAP
    model (whose ``norm`` is an identity) ``fc_norm``.
    """

    name = "vit"
    model_class = VisionTransformer
    example = "vit_base_patch16_224"
    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    @staticmethod
    def qkv(attn, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise NotImplementedError("a wrapped ViT attention does not take an attention mask")
        return Family.qkv(attn, x)
