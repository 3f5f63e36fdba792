"""LoRA on the query and value slices of timm's fused qkv projection (Hu et al., 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..families import family_of
from .base import Method
from .registry import register


class LoraQKV(nn.Module):
    """``qkv(x)`` plus ``alpha / r · x Aᵀ Bᵀ`` added to its query and value slices only.

    ``lora_A`` (2, r, D) holds the down-projections of q and v, ``lora_B`` (2, D, r) their up-projections.
    B starts at zero, so before training the output equals the frozen layer's.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base_layer = base_layer
        self.dim = base_layer.out_features // 3
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(2, r, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(2, self.dim, r))
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x):
        # One in-place rank-2r GEMM on the whole (tokens, 3D) output of the frozen projection, with a block
        # up-projection [B_q 0; 0 0; 0 B_v]: no slice-wise in-place adds (whose backward clones the full gradient
        # twice) and no elementwise pass over the output; the (tokens, 2r) down-projection carries the scaling.
        if self.base_layer.weight.requires_grad or (
            self.base_layer.bias is not None and self.base_layer.bias.requires_grad
        ):
            return self._forward_out_of_place(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        out = self.base_layer(x)
        h = F.linear(x, self.lora_A.flatten(0, 1)) * self.scaling
        out.addmm_(h.to(out.dtype), self.up_projection().to(out.dtype).t())
        return out.view(*shape[:-1], out.shape[-1])

    def up_projection(self) -> torch.Tensor:
        """The (3D, 2r) block matrix [B_q 0; 0 0; 0 B_v]: h = [h_q | h_v] ↦ q, k, v updates."""
        diag = torch.block_diag(self.lora_B[0], self.lora_B[1])
        return torch.cat([diag[: self.dim], diag.new_zeros(self.dim, 2 * self.r), diag[self.dim :]])

    def delta_weight(self) -> torch.Tensor:
        """The update of the fused weight, before scaling: [B_q A_q; 0; B_v A_v] (3D, in)."""
        return self.up_projection() @ self.lora_A.flatten(0, 1)

    def _forward_out_of_place(self, x):
        """The same function where the base layer trains too (its output must stay out of in-place updates)."""
        out = self.base_layer(x)
        h = F.linear(x, self.lora_A.flatten(0, 1)) * self.scaling
        return out + F.linear(h, self.up_projection())


class LoraLinear(nn.Module):
    """``base_layer(x) + alpha / r · x Aᵀ Bᵀ`` (A (r, in), B (out, r) zero-initialised): LoRA on one projection."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base_layer = base_layer
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base_layer(x) + F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update of the weight, before scaling: B A (out, in)."""
        return self.lora_B @ self.lora_A


@register
@dataclass
class LoRA(Method):
    """Low-rank updates of W_q and W_v in every block (B zero-initialised), scaled by ``alpha / r``: on the q and v
    slices of a fused qkv projection (ViT, Swin's windows, EVA-02 tiny/small, BEiT), or on the q and v projections
    where they are separate (EVA-02 base/large)."""

    name = "lora"
    r: int = field(default=8, metadata={"min": 1})
    alpha: float = 8.0

    def inject(self, backbone):
        for block in family_of(backbone).blocks():
            attn = block.attn
            if getattr(attn, "qkv", None) is not None:
                attn.qkv = LoraQKV(attn.qkv, self.r, self.alpha)
            else:
                attn.q_proj = LoraLinear(attn.q_proj, self.r, self.alpha)
                attn.v_proj = LoraLinear(attn.v_proj, self.r, self.alpha)

    def prepare_export(self, model):
        """Fold each update into its frozen projection: W + alpha / r · [B_q A_q; 0; B_v A_v] (or W + alpha / r · B A
        on a separate q or v projection)."""
        for block in family_of(model.backbone).blocks():
            attn = block.attn
            for name in ("qkv", "q_proj", "v_proj"):
                lora = getattr(attn, name, None)
                if isinstance(lora, (LoraQKV, LoraLinear)):
                    with torch.no_grad():
                        lora.base_layer.weight += lora.scaling * lora.delta_weight()
                    setattr(attn, name, lora.base_layer)
