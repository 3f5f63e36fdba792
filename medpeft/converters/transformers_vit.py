"""Hugging Face ``transformers`` image encoders (``Dinov2Model`` with or without registers and SwiGLU, ``ViTModel``,
``CLIPVisionModel``, ``SiglipVisionModel``; the vision tower of a full ``CLIPModel``/``SiglipModel``) as timm ViTs.

The architecture is the checkpoint's ``config.json``. DINOv2 is brought to its original layout and CLIP to OpenAI's,
which timm's own converters then read (:mod:`.timm_layout`); ViT and SigLIP, which timm has no converter for, are
renamed here. Both the names ``save_pretrained`` writes (``encoder.layer.N.attention.attention.query``) and
transformers 5's module names (``layers.N.attention.q_proj``) are read.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import UserError
from .architecture import Architecture
from .timm_layout import to_timm_layout

#: transformers' activation names → timm's
ACTS = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}
#: model_type → (timm model the architecture is built on, converter)
MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit", "clip_vision_model", "siglip_vision_model")

#: One block's tensors: transformers name (either naming) → timm-side name (DINOv2 original / OpenAI / timm).
_BLOCK = [
    (r"attention\.attention\.query|attention\.q_proj|self_attn\.q_proj", "q"),
    (r"attention\.attention\.key|attention\.k_proj|self_attn\.k_proj", "k"),
    (r"attention\.attention\.value|attention\.v_proj|self_attn\.v_proj", "v"),
    (r"attention\.output\.dense|attention\.o_proj|self_attn\.out_proj", "attn.proj"),
    (r"norm1|layernorm_before|layer_norm1", "norm1"),
    (r"norm2|layernorm_after|layer_norm2", "norm2"),
    (r"mlp\.fc1|intermediate\.dense", "mlp.fc1"),
    (r"mlp\.fc2|output\.dense", "mlp.fc2"),
    (r"mlp\.weights_in", "mlp.w12"),
    (r"mlp\.weights_out|mlp\.down_proj", "mlp.w3"),
    (r"mlp\.gate_proj", "gate"),
    (r"mlp\.up_proj", "up"),
    (r"layer_scale1\.lambda1", "ls1.gamma"),
    (r"layer_scale2\.lambda1", "ls2.gamma"),
]
_BLOCK_KEY = re.compile(
    r"(?:encoder\.)?(?:layer|layers)\.(\d+)\.(" + "|".join(p for p, _ in _BLOCK) + r")(?:\.(weight|bias))?$"
)


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The image encoder's part of a ``config.json`` (a full CLIP/SigLIP model nests it as ``vision_config``)."""
    return config.get("vision_config") or config


def convert(
    state: dict[str, torch.Tensor], config: dict[str, Any], where: str
) -> tuple[dict[str, torch.Tensor], Architecture, int, str]:
    """(timm-keyed tensors, architecture, image size, base timm model name) of a transformers checkpoint."""
    cfg = vision_config(config)
    kind = cfg.get("model_type")
    if kind not in MODEL_TYPES:
        raise UserError(
            f"{where}: transformers model_type {kind!r} is not a supported image encoder "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )
    state = _encoder_only(state)
    blocks, rest = _blocks(state)
    width, depth = cfg["hidden_size"], cfg["num_hidden_layers"]
    act = ACTS.get(cfg.get("hidden_act", "gelu"), cfg.get("hidden_act"))
    arch = dict(
        embed_dim=width,
        depth=depth,
        num_heads=cfg["num_attention_heads"],
        patch_size=cfg["patch_size"],
        act=act,
        mlp="mlp",
        class_token=True,
        reg_tokens=0,
        no_embed_class=False,
        pre_norm=False,
        global_pool="token",
        fc_norm=False,
        qkv_bias=cfg.get("qkv_bias", True),
        norm_eps=cfg.get("layer_norm_eps", 1e-6),
    )
    if kind.startswith("dinov2"):
        out, base = _dinov2(blocks, rest, cfg, arch)
    elif kind == "vit":
        out, base = _timm_blocks(blocks), "vit_base_patch16_224"
        out.update(
            cls_token=rest["cls_token"],
            pos_embed=rest["position_embeddings"],
            **_prefixed("patch_embed.proj", rest, "patch_embeddings.projection"),
            **_prefixed("norm", rest, "layernorm"),
        )
    elif kind == "clip_vision_model":
        out, base = _clip(blocks, rest), "vit_base_patch16_clip_224"
        arch.update(pre_norm=True)
    else:
        out, base = _siglip(blocks, rest, cfg), "vit_base_patch16_siglip_224"
        use_head = cfg.get("vision_use_head", True)
        arch.update(class_token=False, global_pool="map" if use_head else "avg", fc_norm=False)
    arch["mlp_hidden"] = out["blocks.0.mlp.fc1.weight"].shape[0]
    if out["blocks.0.mlp.fc2.weight"].shape[1] * 2 == arch["mlp_hidden"]:
        arch.update(mlp="swiglu", act="silu")
    return out, Architecture(**arch), cfg["image_size"], base


def _encoder_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image encoder's tensors with whatever stands before ``embeddings.`` (``vision_model.``, ``dinov2.``)
    removed; a text tower, projection and pooler are left out."""
    anchor = next((k for k in state if re.search(r"(^|\.)embeddings\.patch_embeddings?\.", k)), None)
    if anchor is None:
        raise UserError("no patch embedding (…embeddings.patch_embedding[s]…) among the tensors")
    prefix = anchor[: anchor.index("embeddings.")]
    return {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(("pooler.", "text_model.", "visual_projection"))
    }


def _blocks(state):
    blocks, rest = {}, {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            name = next(t for p, t in _BLOCK if re.fullmatch(p, match[2]))
            suffix = "" if match[3] is None else "." + match[3]
            blocks.setdefault(int(match[1]), {})[name + suffix] = value
        else:
            rest[key.removeprefix("embeddings.")] = value
    return blocks, rest


def _prefixed(new: str, rest: dict, old: str) -> dict[str, torch.Tensor]:
    return {f"{new}.{p}": rest[f"{old}.{p}"] for p in ("weight", "bias") if f"{old}.{p}" in rest}


def _qkv(block: dict, suffix: str) -> torch.Tensor | None:
    if f"q{suffix}" not in block:
        return None
    return torch.cat([block[f"{n}{suffix}"] for n in "qkv"])


def _timm_blocks(blocks: dict) -> dict[str, torch.Tensor]:
    """timm block keys; q, k, v joined into ``attn.qkv``; split SwiGLU gate and up joined into ``mlp.fc1``."""
    out = {}
    for i, block in blocks.items():
        block = dict(block)
        for suffix in (".weight", ".bias"):
            qkv = _qkv(block, suffix)
            if qkv is not None:
                out[f"blocks.{i}.attn.qkv{suffix}"] = qkv
            if f"gate{suffix}" in block:
                block[f"mlp.w12{suffix}"] = torch.cat([block.pop(f"gate{suffix}"), block.pop(f"up{suffix}")])
        for name, value in block.items():
            if name.split(".")[0] not in ("q", "k", "v"):
                out[f"blocks.{i}.{name}"] = value
    return out


def _dinov2(blocks, rest, cfg, arch):
    """DINOv2's original layout (``mask_token``, ``register_tokens``, ``mlp.w12``), for timm's ``_convert_dinov2``."""
    out = _timm_blocks(blocks)
    out.update(
        cls_token=rest["cls_token"],
        pos_embed=rest["position_embeddings"],
        mask_token=rest.get("mask_token", torch.zeros(1, arch["embed_dim"])),
        **_prefixed("patch_embed.proj", rest, "patch_embeddings.projection"),
        **_prefixed("norm", rest, "layernorm"),
    )
    registers = rest.get("register_tokens")
    if registers is not None:
        out["register_tokens"] = registers
    arch.update(
        layer_scale=float(cfg.get("layerscale_value", 1.0)),
        reg_tokens=0 if registers is None else registers.shape[1],
        no_embed_class=registers is not None,
    )
    out, _ = to_timm_layout(out)
    base = "vit_base_patch14_reg4_dinov2" if registers is not None else "vit_base_patch14_dinov2"
    return out, base


def _clip(blocks, rest):
    """OpenAI's CLIP layout (``visual.conv1``, ``transformer.resblocks.N.attn.in_proj_weight``, ``ln_post``), for
    timm's ``_convert_openai_clip``."""
    visual = {
        "visual.class_embedding": rest["class_embedding"],
        "visual.positional_embedding": rest["position_embedding.weight"],
        "visual.conv1.weight": rest["patch_embedding.weight"],
        **_prefixed("visual.ln_pre", rest, "pre_layrnorm"),
        **_prefixed("visual.ln_post", rest, "post_layernorm"),
    }
    names = {
        "attn.proj": "attn.out_proj",
        "norm1": "ln_1",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i, block in blocks.items():
        stem = f"visual.transformer.resblocks.{i}."
        for suffix, kind in ((".weight", "weight"), (".bias", "bias")):
            qkv = _qkv(block, suffix)
            if qkv is not None:
                visual[f"{stem}attn.in_proj_{kind}"] = qkv
        for name, value in block.items():
            base, _, suffix = name.rpartition(".")
            if base in names:
                visual[f"{stem}{names[base]}.{suffix}"] = value
    out, _ = to_timm_layout(visual)
    return out


def _siglip(blocks, rest, cfg):
    """timm's SigLIP keys; the attention-pooling head's packed in-projection split into timm's ``q`` and ``kv``."""
    out = _timm_blocks(blocks)
    pos = rest["position_embedding.weight"]
    out.update(
        pos_embed=pos[None],
        **_prefixed("patch_embed.proj", rest, "patch_embedding"),
        **_prefixed("norm", rest, "post_layernorm"),
    )
    if cfg.get("vision_use_head", True):
        width = pos.shape[-1]
        w, b = rest["head.attention.in_proj_weight"], rest["head.attention.in_proj_bias"]
        out.update(
            {
                "attn_pool.latent": rest["head.probe"],
                "attn_pool.q.weight": w[:width],
                "attn_pool.q.bias": b[:width],
                "attn_pool.kv.weight": w[width:],
                "attn_pool.kv.bias": b[width:],
                **_prefixed("attn_pool.proj", rest, "head.attention.out_proj"),
                **_prefixed("attn_pool.norm", rest, "head.layernorm"),
                **_prefixed("attn_pool.mlp.fc1", rest, "head.mlp.fc1"),
                **_prefixed("attn_pool.mlp.fc2", rest, "head.mlp.fc2"),
            }
        )
    return out
