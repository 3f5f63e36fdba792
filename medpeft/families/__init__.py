"""Backbone families: what each kind of timm model tells the methods.

A method never tests a model's class: it asks the model's :class:`Family` (``family_of(backbone)``) for the blocks
in order and their stages, a block's attention and how it computes q, k, v and its logit bias, the MLP branch,
the prefix tokens, how to let the blocks carry extra tokens, and the pooled feature the head reads. One module per
family, as timm keeps one file per model family: :mod:`.vit` (``VisionTransformer``: plain, DINOv2, SigLIP, CLIP,
GAP), :mod:`.swin` (``SwinTransformer``), :mod:`.eva` (``Eva``: EVA, EVA-02, RoPE ViTs), :mod:`.beit` (``Beit``).
Adding a family is one module here; the methods and the training loop do not change.
"""

from . import beit, eva, swin, vit  # noqa: F401  (registration; the lookup does not depend on its order)
from .base import Family, family_class, family_of, register

__all__ = ["Family", "family_class", "family_of", "register"]
