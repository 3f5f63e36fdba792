"""Naive reference implementations, written from the papers' equations, used only by the tests.

They run on an untouched timm ViT (a deep copy taken before medpeft injects anything) and materialise every
logit, exactly as the official EPT code does. Blocks may carry LayerScale (DINOv2: ``ls1``/``ls2`` with a
``gamma``) and any number of prefix tokens (CLS, then registers).
"""

import numpy as np
import torch


def gamma(layer_scale):
    """A LayerScale's per-channel factor; 1 for a block without one (timm's ``nn.Identity``)."""
    return getattr(layer_scale, "gamma", 1.0)


def naive_ept_features(vit, prompts: dict, way: str, images):
    """CLS feature of EPT (Zu et al. Eq. 5): softmax over [P | QKᵀ/√d], prompt columns dropped, no renormalising.

    Every token, prefix tokens included, has its own prompt row.
    """
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for i, block in enumerate(vit.blocks):
        if i not in prompts:
            x = block(x)
            continue
        attn, P = block.attn, prompts[i]
        B, N, _ = x.shape
        q, k, v = attn.qkv(block.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        S = q @ k.transpose(-2, -1) * attn.scale
        if way in ("concat", "multiply_concat"):
            L = P.shape[-1]
            if way == "multiply_concat":
                P = (S.max(-1).values - S.min(-1).values)[..., None] * P
            logits = torch.cat([P.expand(B, attn.num_heads, N, L), S], dim=-1)
            A = logits.softmax(-1)[..., L:]
        elif way == "add":
            A = (S + P).softmax(-1)
        else:
            A = (S * P).softmax(-1)
        x = x + gamma(block.ls1) * attn.proj((A @ v).transpose(1, 2).reshape(B, N, -1))
        x = x + gamma(block.ls2) * block.mlp(block.norm2(x))
    return vit.norm(x)[:, 0]


def naive_vpt_features(vit, prompt, images):
    """CLS feature of VPT (Jia et al.): tokens [prefix, P_0, patches]; deep: before block i the prompts become P_i.

    The prefix is every token before the patches: CLS, then the registers if any (``n`` of them in all).
    """
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    B, L, n = x.shape[0], prompt.shape[1], x.shape[1] - vit.patch_embed.num_patches
    for i, block in enumerate(vit.blocks):
        if i == 0:
            x = torch.cat([x[:, :n], prompt[0].expand(B, -1, -1), x[:, n:]], dim=1)
        elif i < prompt.shape[0]:
            x = torch.cat([x[:, :n], prompt[i].expand(B, -1, -1), x[:, n + L:]], dim=1)
        x = block(x)
    return vit.norm(x)[:, 0]


def save_google_npz(vit, path):
    """Write a timm ViT in the original Google ViT ``.npz`` layout (the inverse of timm's ``_load_weights``)."""
    n = lambda t: t.detach().cpu().numpy()  # noqa: E731
    D, H = vit.embed_dim, vit.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": n(vit.patch_embed.proj.weight).transpose(2, 3, 1, 0),
        "embedding/bias": n(vit.patch_embed.proj.bias),
        "cls": n(vit.cls_token),
        "Transformer/posembed_input/pos_embedding": n(vit.pos_embed),
        "Transformer/encoder_norm/scale": n(vit.norm.weight),
        "Transformer/encoder_norm/bias": n(vit.norm.bias),
    }
    for i, block in enumerate(vit.blocks):
        p, mha = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = n(block.norm1.weight), n(block.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = n(block.norm2.weight), n(block.norm2.bias)
        for j, name in enumerate(("query", "key", "value")):
            weight = n(block.attn.qkv.weight)[j * D:(j + 1) * D]
            w[mha + f"{name}/kernel"] = weight.T.reshape(D, H, D // H)
            w[mha + f"{name}/bias"] = n(block.attn.qkv.bias)[j * D:(j + 1) * D].reshape(H, D // H)
        w[mha + "out/kernel"] = n(block.attn.proj.weight).T.reshape(H, D // H, D)
        w[mha + "out/bias"] = n(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(fc.weight).T, n(fc.bias)
    np.savez(path, **w)
