"""The prompted attention of EPT: a timm ``Attention`` whose logits carry a learned prompt, in one of four ways."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import null_key_attention

CONCAT_WAYS = ("concat", "multiply_concat")
WAYS = CONCAT_WAYS + ("add", "multiply")
INITS = ("normal", "uniform", "zero", "kaiming", "token")


class EmbeddedPromptAttention(nn.Module):
    """A timm ``Attention`` whose logits carry a learned prompt, in one of four ways.

    - ``concat`` (the paper's main way): ``softmax([P | S])`` with the prompt columns dropped, P (N, L).
    - ``multiply_concat``: the same with row j of P scaled by α_j = max_k S_jk − min_k S_jk (per head).
    - ``add``: ``softmax(S + P)``, P (N, N) starting at 0.
    - ``multiply``: ``softmax(S ∘ P)``, P (N, N) starting at 1; it materialises the logits, as the paper does.

    ``fused=False`` builds the (B, H, N, L + N) logits of the concat ways explicitly, as the official code does (a
    reference for tests and benchmarks). ``lse_kernels=False`` keeps the fused concat ways off the kernels that return
    their log-sum-exp (:func:`~.kernels.null_key_attention`; set for ONNX export). The frozen submodules of the wrapped attention keep their names (``qkv``,
    ``proj``, …), so state-dict keys are those of timm plus ``prompt``. With the ``token`` init the prompt waits
    for :meth:`add_token` (``awaiting_token`` is True until then).
    """

    def __init__(self, attn: nn.Module, num_tokens: int, prompt_length: int, way: str = "concat",
                 init: str | None = None, fused: bool = True):
        super().__init__()
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = getattr(attn, "norm", nn.Identity())
        self.gate = getattr(attn, "gate", None)
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.way = way
        self.fused = fused
        self.lse_kernels = True
        self.num_tokens = num_tokens
        self.awaiting_token = init == "token"
        if way in CONCAT_WAYS:
            self.prompt = nn.Parameter(_init_prompt(torch.empty(num_tokens, prompt_length), init or "normal"))
        else:
            start = torch.zeros if way == "add" else torch.ones
            self.prompt = nn.Parameter(start(num_tokens, num_tokens))

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise NotImplementedError("EPT attention does not take an attention mask")
        B, N, _ = x.shape
        if N != self.num_tokens:
            raise ValueError(
                f"EPT prompt has {self.num_tokens} rows but the input has {N} tokens: build the model with the "
                "img_size of its inputs"
            )
        q, k, v = self._qkv(x)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.way in CONCAT_WAYS and self.fused:
            out = null_key_attention(q, k, v, self.prompt_logit(q, k), self.scale, dropout_p, self.lse_kernels)
        elif self.way in CONCAT_WAYS:
            out = self._materialised_concat(q, k, v)
        elif self.way == "add" and self.fused and not (q.is_cuda and self.prompt.requires_grad and not q.requires_grad):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.prompt, dropout_p=dropout_p,
                                                 scale=self.scale)
        else:  # multiply; add unfused, or on CUDA where SDPA cannot give a float mask alone a gradient (pytorch#148476)
            logits = (q * self.scale) @ k.transpose(-2, -1)
            logits = logits + self.prompt if self.way == "add" else logits * self.prompt
            out = self.attn_drop(logits.softmax(dim=-1)) @ v
        out = self.norm(out.transpose(1, 2).reshape(B, N, -1))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def _qkv(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _materialised_concat(self, q, k, v):
        """The official code's steps: ``[P | QKᵀ·scale]`` (B, H, N, L + N), softmax, prompt columns sliced off."""
        logits = (q @ k.transpose(-2, -1)) * self.scale
        prompt = self.prompt if self.way == "concat" else self._alpha(q, k) * self.prompt
        L = self.prompt.shape[-1]
        logits = torch.cat([prompt.expand(*logits.shape[:3], L), logits], dim=-1)
        attn = self.attn_drop(logits.softmax(dim=-1))[..., L:].clone()
        return attn @ v

    def _alpha(self, q, k):
        """α_j = max_k S_jk − min_k S_jk (B, H, N, 1); the arg-extrema without gradient, α with it."""
        with torch.no_grad():
            logits = q @ k.transpose(-2, -1)
            hi, lo = logits.argmax(dim=-1, keepdim=True), logits.argmin(dim=-1, keepdim=True)
            del logits
        gather = lambda idx: torch.gather(k, 2, idx.expand(-1, -1, -1, k.shape[-1]))  # noqa: E731
        return ((q * (gather(hi) - gather(lo))).sum(-1) * self.scale).unsqueeze(-1)

    def prompt_logit(self, q, k):
        """r_j = logsumexp_l P_jl (N,), or for ``multiply_concat`` logsumexp_l α_j P_jl (B, H, N)."""
        if self.way == "concat":
            return torch.logsumexp(self.prompt, dim=-1)
        return torch.logsumexp(self._alpha(q, k) * self.prompt, dim=-1)

    @torch.no_grad()
    def patch_scaling(self, x) -> torch.Tensor:
        """The patch-wise scaling s_j = Z_j / (Z_j + Σ_l exp P_jl) of each query token (B, H, N), for a block input.

        ``x`` is what this attention receives (the block's normalised tokens). Defined for the concat ways.
        """
        if self.way not in CONCAT_WAYS:
            raise ValueError(f"patch-wise scaling is defined for the concat ways, not {self.way!r}")
        q, k, _ = self._qkv(x)
        log_z = torch.logsumexp((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return torch.sigmoid(log_z - self.prompt_logit(q, k))

    @torch.no_grad()
    def add_token(self, mean_token: torch.Tensor) -> None:
        """The ``token`` init: add the mean embedded token (D,) to every prompt row, linearly resampled to length L."""
        length = self.prompt.shape[-1]
        row = F.interpolate(mean_token.float()[None, None], size=length, mode="linear", align_corners=True)[0, 0]
        self.prompt.add_(row.to(self.prompt.dtype))
        self.awaiting_token = False


def _init_prompt(prompt: torch.Tensor, init: str) -> torch.Tensor:
    """The official EPT initialisations; ``token`` starts at zero and is filled by the first training batch."""
    if init == "normal":
        return nn.init.normal_(prompt, std=0.02)
    if init == "uniform":
        return nn.init.uniform_(prompt, -0.08, 0.08)
    if init == "kaiming":  # fan-in of the official (layers, N, L) tensor: N·L
        return nn.init.normal_(prompt, std=(2.0 / prompt.numel()) ** 0.5)
    return nn.init.zeros_(prompt)
