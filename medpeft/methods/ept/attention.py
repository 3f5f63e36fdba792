"""The prompted attention of EPT: a timm attention whose logits carry a learned prompt, in one of four ways."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...families import Family
from ...families.base import adopt
from .kernels import null_key_attention

CONCAT_WAYS = ("concat", "multiply_concat")
WAYS = CONCAT_WAYS + ("add", "multiply")
INITS = ("normal", "uniform", "zero", "kaiming", "token")


class EmbeddedPromptAttention(nn.Module):
    """A timm attention whose logits carry a learned prompt, in one of four ways.

    - ``concat`` (the paper's main way): ``softmax([P | S])`` with the prompt columns dropped, P (tokens, L).
    - ``multiply_concat``: the same with row j of P scaled by α_j = max_k S_jk − min_k S_jk (per head).
    - ``add``: ``softmax(S + P)``, P of the logits' shape starting at 0.
    - ``multiply``: ``softmax(S ∘ P)``, P of the logits' shape starting at 1; it materialises the logits, as the
      paper does.

    S = QKᵀ/√d plus the backbone's position bias, if any (BEiT, Swin); a structural mask (Swin's shifted windows)
    is added after the prompt, and α_j ranges over the keys it leaves. The backbone's :class:`~medpeft.families.Family`
    computes q, k, v, the bias and the output projection. For windowed attention (``token_index``: the token of every
    window position) a token's prompt row scales it within its window, and the add/multiply prompts have one
    (window area)² block per window.

    ``fused=False`` builds the (B, H, N, L + N) logits of the concat ways explicitly, as the official code does (a
    reference for tests and benchmarks). ``lse_kernels=False`` keeps the fused concat ways off the kernels that return
    their log-sum-exp (:func:`~.kernels.null_key_attention`; set for ONNX export). The wrapped attention's tensors
    keep their names (``qkv``, ``proj``, …), so state-dict keys are those of timm plus ``prompt``. With the
    ``token`` init the prompt waits for :meth:`add_token` (``awaiting_token`` is True until then).
    """

    def __init__(
        self,
        attn: nn.Module,
        family: type[Family],
        num_tokens: int,
        prompt_length: int,
        way: str = "concat",
        init: str | None = None,
        fused: bool = True,
        token_index: torch.Tensor | None = None,
    ):
        super().__init__()
        adopt(self, attn)
        self.family = family
        self.way = way
        self.fused = fused
        self.lse_kernels = True
        self.num_tokens = num_tokens
        self.awaiting_token = init == "token"
        self.register_buffer("token_index", token_index, persistent=False)
        if way in CONCAT_WAYS:
            self.prompt = nn.Parameter(_init_prompt(torch.empty(num_tokens, prompt_length), init or "normal"))
        else:
            start = torch.zeros if way == "add" else torch.ones
            shape = (num_tokens, num_tokens) if token_index is None else (*token_index.shape, token_index.shape[1])
            self.prompt = nn.Parameter(start(shape))

    def forward(self, x, **kwargs):
        B, N, _ = x.shape
        self._check_rows(B, N)
        q, k, v = self.family.qkv(self, x, **kwargs)
        bias, mask = self.family.logit_bias(self, **kwargs), self.family.logit_mask(self, B, **kwargs)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.way in CONCAT_WAYS and self.fused:
            out = null_key_attention(
                q,
                k,
                v,
                self.prompt_logit(q, k, bias, mask),
                self.scale,
                dropout_p,
                _total(bias, mask),
                self.lse_kernels,
            )
        elif self.way in CONCAT_WAYS:
            out = self._materialised_concat(q, k, v, bias, mask)
        elif self.way == "add" and self.fused and not (q.is_cuda and self.prompt.requires_grad and not q.requires_grad):
            logits_bias = _total(self._pairs(B), bias, mask)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=logits_bias.to(q.dtype), dropout_p=dropout_p, scale=self.scale
            )
        else:  # multiply; add unfused, or on CUDA where SDPA cannot give a float mask alone a gradient (pytorch#148476)
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            logits = logits + self._pairs(B) if self.way == "add" else logits * self._pairs(B)
            if mask is not None:
                logits = logits + mask
            out = self.attn_drop(logits.softmax(dim=-1)) @ v
        return self.family.project(self, out, x)

    def _check_rows(self, batch: int, n: int) -> None:
        if self.token_index is None and n != self.num_tokens:
            raise ValueError(
                f"EPT prompt has {self.num_tokens} rows but the input has {n} tokens: build the model with the "
                "img_size of its inputs"
            )
        if self.token_index is not None and (n != self.token_index.shape[1] or batch % self.token_index.shape[0]):
            raise ValueError(
                f"EPT prompt is laid out for {self.token_index.shape[0]} windows of "
                f"{self.token_index.shape[1]} tokens: build the model with the img_size of its inputs"
            )

    def _rows(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-token rows ``t`` (tokens, ...) for the attention rows: as they are, or for windowed attention gathered
        per window position (zeros where a window covers padding) as (batch, 1, window area, ...)."""
        if self.token_index is None:
            return t
        rows = torch.cat([t, t.new_zeros(1, *t.shape[1:])])[self.token_index]
        windows = rows.shape[0]
        return rows.unsqueeze(0).expand(batch // windows, *rows.shape).reshape(batch, 1, *rows.shape[1:])

    def _pairs(self, batch: int) -> torch.Tensor:
        """The add/multiply prompt on the logits: (N, N), or per window (batch, 1, window area, window area)."""
        if self.token_index is None:
            return self.prompt
        windows = self.prompt.shape[0]
        return self.prompt.unsqueeze(0).expand(batch // windows, -1, -1, -1).reshape(batch, 1, *self.prompt.shape[1:])

    def _materialised_concat(self, q, k, v, bias, mask):
        """The official code's steps: ``[P | QKᵀ·scale]`` (B, H, N, L + N), softmax, prompt columns sliced off."""
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = logits + mask
        prompt = self._rows(self.prompt, q.shape[0])
        if self.way == "multiply_concat":
            prompt = self._alpha(q, k, bias, mask) * prompt
        L = self.prompt.shape[-1]
        logits = torch.cat([prompt.expand(*logits.shape[:3], L), logits], dim=-1)
        attn = self.attn_drop(logits.softmax(dim=-1))[..., L:].clone()
        return attn @ v

    def _alpha(self, q, k, bias=None, mask=None):
        """α_j = max_k S_jk − min_k S_jk (B, H, N, 1) over the keys the mask leaves; the arg-extrema without
        gradient, α with it."""
        with torch.no_grad():
            logits = q @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits * self.scale + bias
            if mask is None:
                hi, lo = logits.argmax(dim=-1, keepdim=True), logits.argmin(dim=-1, keepdim=True)
            else:
                hidden = (mask < 0).expand_as(logits)
                hi = logits.masked_fill(hidden, float("-inf")).argmax(dim=-1, keepdim=True)
                lo = logits.masked_fill(hidden, float("inf")).argmin(dim=-1, keepdim=True)
            del logits
        gather = lambda idx: torch.gather(k, 2, idx.expand(-1, -1, -1, k.shape[-1]))  # noqa: E731
        alpha = ((q * (gather(hi) - gather(lo))).sum(-1) * self.scale).unsqueeze(-1)
        if bias is not None:
            full = bias.expand(*q.shape[:3], k.shape[2])
            alpha = alpha + torch.gather(full, -1, hi) - torch.gather(full, -1, lo)
        return alpha

    def prompt_logit(self, q, k, bias=None, mask=None):
        """r_j = logsumexp_l P_jl, or for ``multiply_concat`` logsumexp_l α_j P_jl, broadcastable to (B, H, N)."""
        if self.way == "concat":
            r = torch.logsumexp(self.prompt, dim=-1)
            return self._rows(r, q.shape[0])
        return torch.logsumexp(self._alpha(q, k, bias, mask) * self._rows(self.prompt, q.shape[0]), dim=-1)

    @torch.no_grad()
    def patch_scaling(self, x, **kwargs) -> torch.Tensor:
        """The patch-wise scaling s_j = Z_j / (Z_j + Σ_l exp P_jl) per token (B, H, tokens), for an attention input.

        ``x`` is what this attention receives (the block's normalised tokens, or its windows), ``kwargs`` what the
        block passes with it (:meth:`~medpeft.families.Family.attention_kwargs`). Defined for the concat ways.
        """
        if self.way not in CONCAT_WAYS:
            raise ValueError(f"patch-wise scaling is defined for the concat ways, not {self.way!r}")
        q, k, _ = self.family.qkv(self, x, **kwargs)
        bias, mask = self.family.logit_bias(self, **kwargs), self.family.logit_mask(self, x.shape[0], **kwargs)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None or mask is not None:
            logits = logits + _total(bias, mask)
        s = torch.sigmoid(torch.logsumexp(logits, dim=-1) - self.prompt_logit(q, k, bias, mask))
        if self.token_index is None:
            return s
        windows, area = self.token_index.shape
        batch, heads = s.shape[0] // windows, s.shape[1]
        s = s.reshape(batch, windows, heads, area).transpose(1, 2).reshape(batch, heads, windows * area)
        out = s.new_zeros(batch, heads, self.num_tokens + 1)
        out.scatter_(2, self.token_index.reshape(1, 1, -1).expand(batch, heads, -1), s)
        return out[..., : self.num_tokens]

    @torch.no_grad()
    def add_token(self, mean_token: torch.Tensor) -> None:
        """The ``token`` init: add the mean embedded token (D,) to every prompt row, linearly resampled to length L."""
        length = self.prompt.shape[-1]
        row = F.interpolate(mean_token.float()[None, None], size=length, mode="linear", align_corners=True)[0, 0]
        self.prompt.add_(row.to(self.prompt.dtype))
        self.awaiting_token = False


def _total(*terms: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the terms that are not None (None if all are)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


def _init_prompt(prompt: torch.Tensor, init: str) -> torch.Tensor:
    """The official EPT initialisations; ``token`` starts at zero and is filled by the first training batch."""
    if init == "normal":
        return nn.init.normal_(prompt, std=0.02)
    if init == "uniform":
        return nn.init.uniform_(prompt, -0.08, 0.08)
    if init == "kaiming":  # fan-in of the official (layers, N, L) tensor: N·L
        return nn.init.normal_(prompt, std=(2.0 / prompt.numel()) ** 0.5)
    return nn.init.zeros_(prompt)
