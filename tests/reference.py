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
            x = torch.cat([x[:, :n], prompt[i].expand(B, -1, -1), x[:, n + L :]], dim=1)
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
            weight = n(block.attn.qkv.weight)[j * D : (j + 1) * D]
            w[mha + f"{name}/kernel"] = weight.T.reshape(D, H, D // H)
            w[mha + f"{name}/bias"] = n(block.attn.qkv.bias)[j * D : (j + 1) * D].reshape(H, D // H)
        w[mha + "out/kernel"] = n(block.attn.proj.weight).T.reshape(H, D // H, D)
        w[mha + "out/bias"] = n(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(fc.weight).T, n(fc.bias)
    np.savez(path, **w)


# --- other backbone families: Swin, EVA, BEiT (attention written out, logits materialised) ---------------------------


def ept_attention(S, P, way, mask=None):
    """EPT's attention weights from logits S (B', H, N, N, position bias included) and prompt P: per-query rows
    (B' or 1, 1, N, L) for the concat ways, a (B' or 1, 1, N, N) block for add/multiply. ``mask`` (additive,
    broadcastable to S; None: none) hides keys; it is applied after the prompt and α ranges over the keys it leaves."""
    M = torch.zeros_like(S) if mask is None else mask.expand_as(S)
    if way in ("concat", "multiply_concat"):
        if way == "multiply_concat":
            seen = M == 0
            alpha = S.masked_fill(~seen, float("-inf")).amax(-1) - S.masked_fill(~seen, float("inf")).amin(-1)
            P = alpha[..., None] * P
        L = P.shape[-1]
        return torch.cat([P.expand(*S.shape[:3], L), S + M], dim=-1).softmax(-1)[..., L:]
    return ((S + P if way == "add" else S * P) + M).softmax(-1)


def qkv_of(attn, x):
    """q, k, v (B, H, N, d) of a timm attention with a fused qkv Linear (q/v biases beside it for EVA, BEiT)."""
    B, N, _ = x.shape
    bias = attn.qkv.bias
    if getattr(attn, "q_bias", None) is not None:
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, bias)
    return qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)


def swin_windows(block, x, fill=0.0):
    """A Swin block's cyclic shift, padding and window partition of x (B, H, W, C) → (B·windows, area, C)."""
    from timm.models.swin_transformer import window_partition

    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    x = torch.nn.functional.pad(x, (0, 0, 0, -x.shape[2] % ww, 0, -x.shape[1] % wh), value=fill)
    return window_partition(x, (wh, ww)).reshape(-1, wh * ww, x.shape[-1]), x.shape[1:3]


def swin_merge(block, windows, padded, size):
    """The inverse of :func:`swin_windows`: windows (B·windows, area, C) → (B, H, W, C)."""
    from timm.models.swin_transformer import window_reverse

    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    x = window_reverse(windows.reshape(-1, wh, ww, windows.shape[-1]), (wh, ww), *padded)[:, : size[0], : size[1]]
    return torch.roll(x, shifts=(sh, sw), dims=(1, 2))


def naive_ept_swin_features(swin, prompts: dict, way: str, images):
    """Pooled feature of EPT on a timm Swin: in prompted block i, each window query j of token t gets the prompt row
    P_i[t] (concat ways), or the window's (area × area) block of P_i (add, multiply); the shifted-window mask is
    added after the prompt. Blocks are numbered across stages."""
    x, i = swin.patch_embed(images), 0
    for stage in swin.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            if i in prompts:
                B, H, W, C = x.shape
                attn, P = block.attn, prompts[i]
                windows, padded = swin_windows(block, block.norm1(x))
                tokens, _ = swin_windows(block, torch.arange(H * W).view(1, H, W, 1), fill=-1)
                tokens = tokens[..., 0]
                q, k, v = qkv_of(attn, windows)
                S = q @ k.transpose(-2, -1) * attn.scale + attn._get_rel_pos_bias()
                mask = None if block.attn_mask is None else block.attn_mask.repeat(B, 1, 1)[:, None]
                if way in ("concat", "multiply_concat"):
                    rows = torch.where(tokens[..., None] >= 0, P[tokens.clamp(min=0)], torch.zeros_like(P[:1]))
                    P = rows.repeat(B, 1, 1)[:, None]
                else:
                    P = P.repeat(B, 1, 1)[:, None]
                out = (ept_attention(S, P, way, mask) @ v).transpose(1, 2).reshape(windows.shape)
                x = x + swin_merge(block, attn.proj(out), padded, (H, W))
                x = x + block.mlp(block.norm2(x))
            else:
                x = block(x)
            i += 1
    return swin.forward_head(swin.norm(x), pre_logits=True)


def naive_vpt_swin_features(swin, prompts: list, images):
    """Pooled feature of VPT on a timm Swin as the official prompted Swin (Jia et al., KMnP/vpt), each image's prompts
    joined to its own windows: ``prompts[i]`` (L, C) replaces the prompts before block i (None: keep them). In a
    block the prompts join every window (no position bias, no mask), their outputs are averaged over the image's
    windows; a patch merging maps them as four copies of themselves; they are dropped before the final norm."""
    x, p, i = swin.patch_embed(images), None, 0
    B = x.shape[0]
    for stage in swin.layers:
        merging = stage.downsample
        if not isinstance(merging, torch.nn.Identity):
            p = merging.reduction(merging.norm(torch.cat([p, p, p, p], dim=-1)))
        x = merging(x)
        for block in stage.blocks:
            if prompts[i] is not None:
                p = prompts[i].expand(B, -1, -1)
            _, H, W, C = x.shape
            n, attn = p.shape[1], block.attn
            windows, padded = swin_windows(block, block.norm1(x))
            per_image = windows.shape[0] // B
            joined = torch.cat([block.norm1(p).repeat_interleave(per_image, 0), windows], dim=1)
            q, k, v = qkv_of(attn, joined)
            bias = torch.nn.functional.pad(attn._get_rel_pos_bias(), (n, 0, n, 0))
            if block.attn_mask is not None:
                bias = bias + torch.nn.functional.pad(block.attn_mask, (n, 0, n, 0)).repeat(B, 1, 1)[:, None]
            A = (q @ k.transpose(-2, -1) * attn.scale + bias).softmax(-1)
            out = attn.proj((A @ v).transpose(1, 2).reshape(joined.shape))
            x = x + swin_merge(block, out[:, n:], padded, (H, W))
            p = p + out[:, :n].reshape(B, per_image, n, C).mean(1)
            x, p = x + block.mlp(block.norm2(x)), p + block.mlp(block.norm2(p))
            i += 1
    return swin.forward_head(swin.norm(x), pre_logits=True)


def rotated_qkv(attn, x, rope, plain: int):
    """q, k, v of an EVA attention: the rotary embedding ``rope`` on every token after the first ``plain``."""
    from timm.layers import apply_rot_embed_cat

    q, k, v = qkv_of(attn, x)
    rotate = lambda t: torch.cat([t[:, :, :plain], apply_rot_embed_cat(t[:, :, plain:], rope)], dim=2)  # noqa: E731
    return rotate(q), rotate(k), v


def _scaled(gamma, x):
    return x if gamma is None else gamma * x


def _eva_block(block, x, A, v):
    """The rest of a pre-norm EVA/BEiT block once its attention weights A and values v are known."""
    B, N, _ = x.shape
    out = (A @ v).transpose(1, 2).reshape(B, N, -1)
    norm = getattr(block.attn, "norm", None)  # EVA's scale norm (an identity on EVA-02), none on BEiT
    x = x + _scaled(block.gamma_1, block.attn.proj(out if norm is None else norm(out)))
    return x + _scaled(block.gamma_2, block.mlp(block.norm2(x)))


def naive_ept_eva_features(eva, prompts: dict, way: str, images):
    """Pooled feature of EPT on a timm Eva: S from the rotated q, k (prefix tokens not rotated), prompt as on a ViT."""
    x, rope = eva._pos_embed(eva.patch_embed(images))
    x = eva.norm_pre(x)
    for i, block in enumerate(eva.blocks):
        if i not in prompts:
            x = block(x, rope=rope)
            continue
        q, k, v = rotated_qkv(block.attn, block.norm1(x), rope, eva.num_prefix_tokens)
        x = _eva_block(block, x, ept_attention(q @ k.transpose(-2, -1) * block.attn.scale, prompts[i], way), v)
    return eva.forward_head(eva.norm(x), pre_logits=True)


def naive_vpt_eva_features(eva, prompt, images):
    """Pooled feature of VPT on a timm Eva: tokens [prefix, P, patches], the prompts not rotated (as CLS); deep:
    before block i the prompts become P_i."""
    x, rope = eva._pos_embed(eva.patch_embed(images))
    x = eva.norm_pre(x)
    B, L, n = x.shape[0], prompt.shape[1], eva.num_prefix_tokens
    for i, block in enumerate(eva.blocks):
        if i == 0:
            x = torch.cat([x[:, :n], prompt[0].expand(B, -1, -1), x[:, n:]], dim=1)
        elif i < prompt.shape[0]:
            x = torch.cat([x[:, :n], prompt[i].expand(B, -1, -1), x[:, n + L :]], dim=1)
        q, k, v = rotated_qkv(block.attn, block.norm1(x), rope, n + L)
        x = _eva_block(block, x, (q @ k.transpose(-2, -1) * block.attn.scale).softmax(-1), v)
    return eva.forward_head(eva.norm(torch.cat([x[:, :n], x[:, n + L :]], dim=1)), pre_logits=True)


def beit_tokens(beit, images):
    """[CLS, patches] (plus the absolute position embedding, if any) of a timm Beit."""
    x = beit.patch_embed(images)
    x = torch.cat([beit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return beit.pos_drop(x if beit.pos_embed is None else x + beit.pos_embed)


def beit_bias(beit, attn):
    """The relative position bias BEiT adds to QKᵀ/√d: the attention's own table and/or the model's shared one."""
    bias = attn._get_rel_pos_bias() if attn.relative_position_bias_table is not None else 0.0
    return bias if beit.rel_pos_bias is None else bias + beit.rel_pos_bias()


def naive_ept_beit_features(beit, prompts: dict, way: str, images):
    """Pooled feature of EPT on a timm Beit: S = QKᵀ/√d + relative position bias, prompt as on a ViT."""
    x = beit_tokens(beit, images)
    shared = None if beit.rel_pos_bias is None else beit.rel_pos_bias()
    for i, block in enumerate(beit.blocks):
        if i not in prompts:
            x = block(x, shared_rel_pos_bias=shared)
            continue
        q, k, v = qkv_of(block.attn, block.norm1(x))
        S = q @ k.transpose(-2, -1) * block.attn.scale + beit_bias(beit, block.attn)
        x = _eva_block(block, x, ept_attention(S, prompts[i], way), v)
    return beit.forward_head(beit.norm(x), pre_logits=True)


def naive_vpt_beit_features(beit, prompt, images):
    """Pooled feature of VPT on a timm Beit: tokens [CLS, P, patches]; the prompts' rows and columns of the relative
    position bias are zero, the other entries those of CLS and the patches."""
    x = beit_tokens(beit, images)
    B, N, L = x.shape[0], x.shape[1], prompt.shape[1]
    kept = torch.tensor([0, *range(1 + L, N + L)])  # positions of CLS and the patches among the N + L tokens
    for i, block in enumerate(beit.blocks):
        if i == 0:
            x = torch.cat([x[:, :1], prompt[0].expand(B, -1, -1), x[:, 1:]], dim=1)
        elif i < prompt.shape[0]:
            x = torch.cat([x[:, :1], prompt[i].expand(B, -1, -1), x[:, 1 + L :]], dim=1)
        bias = torch.zeros(1, block.attn.num_heads, N + L, N + L, dtype=x.dtype)
        bias[:, :, kept[:, None], kept] = beit_bias(beit, block.attn)
        q, k, v = qkv_of(block.attn, block.norm1(x))
        x = _eva_block(block, x, (q @ k.transpose(-2, -1) * block.attn.scale + bias).softmax(-1), v)
    return beit.forward_head(beit.norm(torch.cat([x[:, :1], x[:, 1 + L :]], dim=1)), pre_logits=True)
