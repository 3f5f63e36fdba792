"""A ViT's architecture as plain facts (:class:`Architecture`): read off a built timm model, stated by a checkpoint,
turned into timm ``VisionTransformer`` arguments, and compared to say in one line what differs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

#: What names a ViT: a checkpoint that differs from the named backbone in one of these is another model.
IDENTITY = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_hidden", "mlp", "act", "class_token", "reg_tokens")


@dataclass
class Architecture:
    """A timm ``VisionTransformer``: width, depth, heads, patch; ``mlp_hidden`` is the width of the MLP's first layer
    (for ``mlp="swiglu"`` the packed gate and value, twice the hidden width); ``act`` the MLP's activation (``gelu``,
    ``quick_gelu``, ``gelu_tanh``; SwiGLU: ``silu``); prefix tokens (``class_token``, ``reg_tokens``, whether they
    skip the position embedding: ``no_embed_class``); ``pre_norm`` (CLIP's norm before the blocks), ``layer_scale``
    (LayerScale's init value, None without), ``global_pool`` (``token``, ``avg``, ``map``) and ``fc_norm`` (the norm
    after pooling, as MAE's fine-tuning layout); ``qkv_bias`` and the LayerNorms' ``norm_eps``. A field that is
    None is not known (a checkpoint whose shapes do not tell it)."""

    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    mlp_hidden: int | None = None
    mlp: str | None = None
    act: str | None = None
    class_token: bool | None = None
    reg_tokens: int | None = None
    no_embed_class: bool | None = None
    pre_norm: bool | None = None
    layer_scale: float | None = None
    global_pool: str | None = None
    fc_norm: bool | None = None
    qkv_bias: bool | None = None
    norm_eps: float | None = None

    @classmethod
    def of_model(cls, model: nn.Module) -> Architecture:
        """The facts of a built timm ``VisionTransformer``."""
        block = model.blocks[0]
        glu = type(block.mlp).__name__ == "GluMlp"
        norm = model.norm if not isinstance(model.norm, nn.Identity) else model.fc_norm
        ls = getattr(block.ls1, "gamma", None)
        return cls(
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=block.attn.num_heads,
            patch_size=model.patch_embed.patch_size[0],
            mlp_hidden=block.mlp.fc1.out_features,
            mlp="swiglu" if glu else "mlp",
            act=_act_name(block.mlp.act),
            class_token=model.cls_token is not None,
            reg_tokens=model.num_reg_tokens,
            no_embed_class=model.no_embed_class,
            pre_norm=not isinstance(model.norm_pre, nn.Identity),
            layer_scale=None if ls is None else 1.0,
            global_pool=model.global_pool,
            fc_norm=not isinstance(model.fc_norm, nn.Identity),
            qkv_bias=block.attn.qkv.bias is not None if hasattr(block.attn, "qkv") else None,
            norm_eps=getattr(norm, "eps", None),
        )

    def known(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def differences(self, other: Architecture) -> list[str]:
        """``field A vs B`` for each identity field (:data:`IDENTITY`) both know and that differs."""
        mine, theirs = self.known(), other.known()
        return [f"{k} {mine[k]} vs {theirs[k]}" for k in IDENTITY if k in mine and k in theirs and mine[k] != theirs[k]]

    def describe(self) -> str:
        """``ViT embed_dim 768, depth 12, …`` (the known identity fields)."""
        known = self.known()
        return "ViT " + ", ".join(f"{k} {known[k]}" for k in IDENTITY if k in known)

    def timm_kwargs(self) -> dict[str, Any]:
        """Arguments of timm's ``VisionTransformer`` for the known facts."""
        from timm.layers import SwiGLUPacked

        known, out = self.known(), {}
        for name in (
            "embed_dim",
            "depth",
            "num_heads",
            "patch_size",
            "class_token",
            "reg_tokens",
            "no_embed_class",
            "pre_norm",
            "global_pool",
            "fc_norm",
            "qkv_bias",
        ):
            if name in known:
                out[name] = known[name]
        if "mlp_hidden" in known and "embed_dim" in known:
            out["mlp_ratio"] = known["mlp_hidden"] / known["embed_dim"]
        if known.get("mlp") == "swiglu":
            out.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
        elif "act" in known:
            out["act_layer"] = known["act"]
        if "layer_scale" in known:
            out["init_values"] = known["layer_scale"]
        if "norm_eps" in known:
            out["norm_layer"] = partial(nn.LayerNorm, eps=known["norm_eps"])
        return out


def _act_name(act: nn.Module) -> str:
    name = type(act).__name__
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    return {"QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "SiLU": "silu"}.get(name, name.lower())
