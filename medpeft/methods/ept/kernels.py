"""EPT's attention through fused kernels: softmax over the logits plus one extra key of zero value.

For a prompted block, with logits S = QKᵀ/√d per head and a learned prompt P (one row per token, shared by heads
and batch), EPT's attention is ``A = softmax_row([P | S])[:, L:]``: the prompt columns are dropped and the rest is
*not* renormalised. Writing Z_j = Σ_k exp S_jk and r_j = logsumexp_l P_jl,

    A_jk = exp S_jk / (Z_j + exp r_j) = softmax(S)_jk · s_j,   s_j = Z_j / (Z_j + exp r_j) = sigmoid(log Z_j − r_j),

so the prompt acts as one extra key with zero value whose logit for query j is r_j. A position bias in S (BEiT,
Swin) changes nothing: it rides along as the kernel's additive mask. :func:`null_key_attention`
computes that with fused attention kernels (no (B, H, N, N + L) tensor is ever built): the row log-sum-exp of
the CPU flash, CUDA flash or CUDA memory-efficient kernel gives s_j directly; elsewhere SDPA runs with the logit
in an expanded query channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


def null_key_attention(q, k, v, logit, scale: float, dropout_p: float = 0.0, bias=None, lse_kernels: bool = True):
    """``softmax([logit | q kᵀ·scale + bias])[..., 1:] @ v``: attention plus one extra key of zero value, fused.

    ``q, k, v`` are (B, H, N, d); ``logit`` broadcasts to (B, H, N); ``bias`` (None: none), an additive logit bias
    broadcastable to (B, H, N, N), is not differentiated on the kernel path. Where a fused kernel returns its row
    log-sum-exp (CPU flash, with or without a bias; CUDA flash or memory-efficient without one; no dropout;
    ``lse_kernels``) this is that one kernel and the scaling s = sigmoid(lse − logit) (:class:`_ScaledFusedAttention`);
    elsewhere the logit rides in an extra query channel against an extra key (:func:`_extra_channel_attention`: plain
    SDPA, which ONNX export takes).
    """
    if bias is not None:
        bias = bias.to(q.dtype)
    kernel = _lse_kernel(q, dropout_p, bias) if lse_kernels else None
    if kernel is not None:
        return _ScaledFusedAttention.apply(q, k, v, logit.expand(q.shape[:3]), scale, kernel, bias)
    return _extra_channel_attention(q, k, v, logit, scale, dropout_p, bias)


def _extra_channel_attention(q, k, v, logit, scale: float, dropout_p: float = 0.0, bias=None):
    """The null key through plain SDPA: query channel d carries the logit, the extra key a 1/scale there (and a
    zero bias column, with a bias).

    The head dimension is padded to a multiple of 8 for q, k and v alike (equal head dims keep SDPA on its fused
    kernels on every device) and sliced back on return.
    """
    B, H, N, d = q.shape
    pad = (d + 8) // 8 * 8 - d  # ceil((d + 1) / 8) · 8 − d, with no negative floor division (ONNX truncates)
    q = torch.cat([q, logit.to(q.dtype).expand(B, H, N).unsqueeze(-1), q.new_zeros(B, H, N, pad - 1)], dim=-1)
    null_key = F.pad(k.new_full((B, H, 1, 1), 1.0 / scale), (d, pad - 1))  # 1/scale in channel d, no indexing
    k = torch.cat([F.pad(k, (0, pad)), null_key], dim=2)
    v = F.pad(v, (0, pad, 0, 1))
    mask = None if bias is None else F.pad(bias.to(q.dtype), (0, 1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out[..., :d]


class _LseKernel(NamedTuple):
    """A fused attention kernel that returns its row log-sum-exp, and its backward.

    ``forward(q, k, v, scale, bias) -> (out, lse, saved)`` with ``lse[..., :N]`` the natural-log row log-sum-exp;
    ``backward(grad_out, q, k, v, out, lse, saved, scale, bias) -> (dq, dk, dv)``; ``bias`` is an additive logit bias
    or None (the CUDA kernels here are only chosen without one).
    """

    name: str
    forward: Callable
    backward: Callable


_aten = torch.ops.aten
_CPU_FLASH = _LseKernel(
    "cpu flash",
    lambda q, k, v, scale, bias=None: (
        *_aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias, scale=scale),
        (),
    ),
    lambda g, q, k, v, out, lse, saved, scale, bias=None: _aten._scaled_dot_product_flash_attention_for_cpu_backward(
        g, q, k, v, out, lse, 0.0, False, attn_mask=bias, scale=scale
    ),
)


def _cuda_flash_forward(q, k, v, scale, bias=None):
    out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = _aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, False, False, scale=scale
    )
    return out, lse, (cum_q, cum_k, max_q, max_k, seed, offset)


def _cuda_flash_backward(g, q, k, v, out, lse, saved, scale, bias=None):
    cum_q, cum_k, max_q, max_k, seed, offset = saved
    return _aten._scaled_dot_product_flash_attention_backward(
        g, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, False, seed, offset, scale=scale
    )


def _cuda_efficient_forward(q, k, v, scale, bias=None):
    out, lse, seed, offset = _aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
    return out, lse, (seed, offset)  # lse is padded along N (to a multiple of 32)


def _cuda_efficient_backward(g, q, k, v, out, lse, saved, scale, bias=None):
    seed, offset = saved
    return _aten._scaled_dot_product_efficient_attention_backward(
        g, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False, scale=scale
    )[:3]


_CUDA_FLASH = _LseKernel("cuda flash", _cuda_flash_forward, _cuda_flash_backward)
_CUDA_EFFICIENT = _LseKernel("cuda efficient", _cuda_efficient_forward, _cuda_efficient_backward)


def _lse_kernel(q, dropout_p: float, bias=None) -> _LseKernel | None:
    """The fused kernel with a log-sum-exp output that fits ``q`` and ``bias`` (None: use the extra-channel path).

    CPU flash takes a bias that needs no gradient. CUDA flash needs fp16/bf16 and compute capability 8.0+,
    memory-efficient takes fp32 too; both head dims that are multiples of 8 (up to 256 and 128), and no bias here
    (SDPA on the extra-channel path runs a biased attention on CUDA's memory-efficient kernel). The SDPA backend
    switches (``torch.backends.cuda.*_sdp_enabled``) are honoured.
    """
    if dropout_p or (bias is not None and bias.requires_grad):
        return None
    if q.device.type == "cpu":
        return _CPU_FLASH
    if bias is not None:
        return None
    d = q.shape[-1]
    if q.device.type != "cuda" or d % 8:
        return None
    if (
        q.dtype in (torch.float16, torch.bfloat16)
        and d <= 256
        and torch.backends.cuda.flash_sdp_enabled()
        and torch.cuda.get_device_capability(q.device) >= (8, 0)
    ):
        return _CUDA_FLASH
    if d <= 128 and torch.backends.cuda.mem_efficient_sdp_enabled():
        return _CUDA_EFFICIENT
    return None


class _ScaledFusedAttention(torch.autograd.Function):
    """y = s ⊙ attention(q, k, v) with s = sigmoid(lse − logit), lse the fused kernel's own row log-sum-exp.

    Backward reuses the kernel's backward: called with grad_out = s ⊙ dy and out = y, its row term
    D = rowsum(grad_out ⊙ out) = s²·(dy·O) is exactly what the extra dependence of s on lse requires, so
    dq, dk, dv are exact; d logit = −(dy·y)(1 − s). Nothing of size N × N is stored.
    """

    @staticmethod
    def forward(ctx, q, k, v, logit, scale, kernel, bias=None):
        out, lse, saved = kernel.forward(q, k, v, scale, bias)
        s = torch.sigmoid(lse[..., : q.shape[2]] - logit)
        y = out * s.unsqueeze(-1).to(out.dtype)
        ctx.save_for_backward(q, k, v, y, lse, s, bias)
        ctx.scale, ctx.kernel, ctx.saved = scale, kernel, saved
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, y, lse, s, bias = ctx.saved_tensors
        dq = dk = dv = None
        if any(ctx.needs_input_grad[:3]):
            grad_out = dy * s.unsqueeze(-1).to(dy.dtype)
            dq, dk, dv = ctx.kernel.backward(grad_out, q, k, v, y, lse, ctx.saved, ctx.scale, bias)
        dlogit = -(dy * y).sum(-1, dtype=s.dtype) * (1 - s) if ctx.needs_input_grad[3] else None
        return (dq, dk, dv, dlogit, None, None, None)[: len(ctx.needs_input_grad)]
