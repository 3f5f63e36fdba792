"""Checkpoints timm's own ViT converter reads (OpenAI CLIP, open_clip ``visual.trunk``, DINOv2's original layout,
MAE/RETFound's ``model`` dict), brought to timm's keys by timm's code, and what their tensor shapes say of the
architecture."""

from __future__ import annotations

import math
import re

import torch
from timm.models.vision_transformer import _convert_dinov2, _convert_openai_clip

from .architecture import Architecture

#: Keys of a checkpoint that are not the image encoder: MAE's decoder and mask token, a classifier or projection head.
NOT_ENCODER = re.compile(r"^(decoder[._]|mask_token$|head\.|head_dist\.|pre_logits\.)")


def to_timm_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The image encoder's tensors under timm's ``VisionTransformer`` keys, and the layout they came in, in words.

    The conversions are timm's own (``_convert_openai_clip``, ``_convert_dinov2`` and the ``visual.trunk.`` prefix
    of its ``checkpoint_filter_fn``); position embeddings are resampled later, to the built model's grid.
    """
    for nested in ("model", "state_dict"):  # MAE / RETFound, Lightning-style files
        if isinstance(state.get(nested), dict):
            state = state[nested]
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "visual.class_embedding" in state:
        return _encoder(_convert_openai_clip(state, None)), "OpenAI CLIP / open_clip visual tower"
    if any(k.startswith("visual.trunk.") for k in state):
        return _encoder(
            {k.removeprefix("visual.trunk."): v for k, v in state.items() if k.startswith("visual.trunk.")}
        ), "open_clip timm trunk"
    if "mask_token" in state and any(k.startswith("decoder") for k in state):
        return _encoder(state), "MAE (encoder and decoder)"
    if "mask_token" in state or "register_tokens" in state:
        return _encoder(_convert_dinov2(dict(state), None)), "DINOv2 original"
    return _encoder(state), "MAE / timm ViT" if "fc_norm.weight" in state else "timm ViT"


def _encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not NOT_ENCODER.match(k)}


def shape_facts(state: dict[str, torch.Tensor]) -> Architecture:
    """What timm-keyed ViT tensors say of their architecture (not the heads, activation or norm epsilon)."""
    if "blocks.0.mlp.fc1.weight" not in state or "patch_embed.proj.weight" not in state:
        return Architecture()
    fc1, fc2 = state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc2.weight"]
    glu = fc2.shape[1] * 2 == fc1.shape[0]
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = ("cls_token" in state) + reg
    rows = state["pos_embed"].shape[-2] if "pos_embed" in state else None
    no_embed_class = None if rows is None or not prefix else math.isqrt(rows) ** 2 == rows
    pool = (
        "map"
        if "attn_pool.latent" in state
        else "avg"
        if "fc_norm.weight" in state and "norm.weight" not in state
        else None
    )
    return Architecture(
        embed_dim=state["patch_embed.proj.weight"].shape[0],
        depth=1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))),
        patch_size=state["patch_embed.proj.weight"].shape[-1],
        mlp_hidden=fc1.shape[0],
        mlp="swiglu" if glu else "mlp",
        act="silu" if glu else None,
        class_token="cls_token" in state,
        reg_tokens=reg,
        no_embed_class=no_embed_class,
        pre_norm="norm_pre.weight" in state,
        layer_scale=1.0 if "blocks.0.ls1.gamma" in state else None,
        global_pool=pool,
        fc_norm=True if pool == "avg" else None,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
