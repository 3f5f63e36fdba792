"""The :class:`Family` interface, its registry, and the pieces every family shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

_FAMILIES: dict[type[nn.Module], type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: the family serves models of ``cls.model_class`` (one family per model class)."""
    if _FAMILIES.get(cls.model_class, cls) is not cls:
        raise ValueError(f"{cls.model_class.__name__} already has the family {_FAMILIES[cls.model_class].__name__}")
    _FAMILIES[cls.model_class] = cls
    return cls


def family_class(model: nn.Module, name: str | None = None) -> type[Family]:
    """The family of ``model`` (a timm model, built from ``name`` if given): the family registered for its class,
    else for its nearest base class in its MRO (the most specific wins, whatever the order of registration); or a
    one-line error listing the families by name."""
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    families = sorted(_FAMILIES.values(), key=lambda family: family.name)
    kinds = [family.model_class.__name__ for family in families]
    what = f"backbone {name!r} is a" if name else "backbone"
    examples = ", ".join(family.example for family in families)
    raise UserError(
        f"{what} {type(model).__name__}, not a timm {', '.join(kinds[:-1])} or {kinds[-1]}: use e.g. {examples}"
    )


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` view of ``model``."""
    return family_class(model)(model)


class Family:
    """What the methods need to know of one kind of timm backbone, so that no method tests a class.

    An instance is a view of one model. The blocks are numbered 0 … depth − 1 in forward order across stages;
    block i sees :meth:`tokens` tokens of width :meth:`dim` (prefix tokens, then the patches of its grid in
    row-major order). The defaults describe a plain sequence of pre-norm blocks in ``model.blocks`` (timm's
    ``VisionTransformer``, ``Eva``, ``Beit``); a family overrides what differs. The attention helpers
    (:meth:`qkv`, :meth:`logit_bias`, :meth:`logit_mask`, :meth:`project`) are static: wrapped attentions call them
    on a module that carries the attention's own tensors (see :func:`adopt`).
    """

    name: ClassVar[str] = ""
    model_class: ClassVar[type[nn.Module]] = nn.Module
    example: ClassVar[str] = ""  # a timm model name of the family
    #: timm's checkpoint converter for the family (key renames, position tables resampled to the model's size)
    checkpoint_filter: ClassVar[Callable[[dict, nn.Module], dict]]
    #: whether the blocks take (B, H, W, C) tensors rather than (B, N, C) token sequences
    spatial: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def prepare(cls, model: nn.Module) -> None:
        """Settle the model once, when it is created, before weights or methods: nothing by default."""

    # --- structure -------------------------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in forward order."""
        return list(self.model.blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks())

    def stage_of(self, i: int) -> int:
        """The stage of block i (stages change the token grid and width; one stage here)."""
        return 0

    def block_modules(self, i: int) -> list[nn.Module]:
        """What runs as block i (for Swin the first block of a stage includes the patch merging before it)."""
        return [self.blocks()[i]]

    def dim(self, i: int) -> int:
        """Token width of block i."""
        return self.model.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches (CLS, registers) in every block."""
        return self.model.num_prefix_tokens

    @property
    def patch_grid(self) -> tuple[int, int]:
        """The patch embedding's grid (rows, columns)."""
        return tuple(self.model.patch_embed.grid_size)

    def grid(self, i: int) -> tuple[int, int]:
        """The token grid of block i."""
        return self.patch_grid

    def tokens(self, i: int) -> int:
        """Tokens block i sees: prefix tokens plus its grid."""
        h, w = self.grid(i)
        return self.num_prefix_tokens + h * w

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature the head reads."""
        return self.model.num_features

    def final_norms(self) -> list[str]:
        """Attribute names (on the model) of the normalisation layers between the last block and the head."""
        return [n for n in ("norm", "fc_norm") if next(getattr(self.model, n).parameters(), None) is not None]

    def tensor_stage(self, name: str) -> int:
        """The first stage (see :meth:`~medpeft.methods.Method.frozen_stages`) that computes with the model tensor
        ``name``: i for block i, depth for what follows the blocks, 0 for the embedding and shared tensors."""
        if name.startswith("blocks."):
            return int(name.split(".")[1])
        if name.startswith(("norm.", "fc_norm.", "attn_pool.", "head.")):
            return self.depth
        return 0

    # --- what methods wrap -----------------------------------------------------------------------------------------
    def mlp_branch(self, block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """(norm, mlp, layer scale or None) of the block's MLP branch: ``x + scale(mlp(norm(x)))``."""
        return block.norm2, block.mlp, getattr(block, "ls2", None)

    def set_mlp_branch(self, block: nn.Module, branch: nn.Module) -> None:
        """Make ``branch`` (which took over the norm, MLP and layer scale) the block's whole MLP branch."""
        block.mlp = branch
        block.norm2 = nn.Identity()
        if hasattr(block, "ls2"):
            block.ls2 = nn.Identity()

    def patch_embed_output(self) -> tuple[nn.Module, str]:
        """(owner, attribute) of the last layer of the patch embedding (its norm, an identity on most models)."""
        return self.model.patch_embed, "norm"

    # --- running the model piece by piece (the evaluation cache, data-dependent inits) ------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens block 0 receives."""
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))

    def block_kwargs(self, i: int) -> dict:
        """Keyword arguments the model passes to block i (rotary embeddings, shared position bias)."""
        return {}

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block i (with whatever runs before it) on x, as the model's own forward runs it."""
        return self.blocks()[i](x, **self.block_kwargs(i))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature the head reads, from the last block's output (the model's own norm and pooling)."""
        return self.model.forward_head(self.model.norm(x), pre_logits=True)

    def patch_map(self, features: torch.Tensor) -> torch.Tensor:
        """The patch tokens of ``features`` (the model's ``forward_features``: the last block's output after the
        final norm) as a (B, D, h, w) map on the patch grid; the prefix tokens (CLS, registers) are left out, and a
        method's extra tokens are gone by then (VPT drops its prompts after the last block). A model whose final
        norm is its pooled feature's (``fc_norm``, GAP models: ``norm`` is an identity) gets it on every patch
        token."""
        h, w = self.patch_grid
        x = features[:, self.num_prefix_tokens :]
        if "fc_norm" in self.final_norms() and "norm" not in self.final_norms():
            x = self.model.fc_norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The patch map a dense head reads, from the last block's output (:meth:`patch_map` after the final norm,
        as :meth:`pool` is for the pooled feature)."""
        return self.patch_map(self.model.norm(x))

    @property
    def dense_dim(self) -> int:
        """Width of the patch map's tokens (the last block's)."""
        return self.dim(self.depth - 1)

    # --- attention internals ---------------------------------------------------------------------------------------
    def attention_kwargs(self, i: int) -> dict:
        """Keyword arguments block i passes to its attention besides the tokens."""
        return self.block_kwargs(i)

    def token_index(self, i: int) -> torch.Tensor | None:
        """For windowed attention, the token (row of a per-token prompt) of every attention row; None: the
        attention rows are the block's tokens in order."""
        return None

    def on_patch_grid(self, i: int, values: torch.Tensor) -> torch.Tensor:
        """Per-token values (B, tokens(i)) of block i laid out as the prefix tokens then the patch grid."""
        return values

    @staticmethod
    def qkv(attn: nn.Module, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, heads, N, head dim) as the attention computes them from its input x."""
        B, N, _ = x.shape
        qkv = attn.qkv(x)
        if getattr(attn, "q_bias", None) is not None:  # EVA, BEiT: q/v biases beside a bias-free Linear
            qkv = qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        q, k, v = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return q if q_norm is None else q_norm(q), k if k_norm is None else k_norm(k), v

    @staticmethod
    def logit_bias(attn: nn.Module, **kwargs: Any) -> torch.Tensor | None:
        """The position bias added to QKᵀ/√d (part of the logits S), broadcastable to (B, heads, N, N); None."""
        return None

    @staticmethod
    def logit_mask(attn: nn.Module, batch: int, **kwargs: Any) -> torch.Tensor | None:
        """A structural additive mask (which keys a query may see), broadcastable to (B, heads, N, N); None here."""
        return None

    @staticmethod
    def project(attn: nn.Module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention's output from the attended values y (B, heads, N, head dim) and its input x."""
        B, _, N, _ = y.shape
        out = y.transpose(1, 2).reshape(B, N, -1)
        norm = getattr(attn, "norm", None)
        if norm is not None:
            out = norm(out)
        gate = getattr(attn, "gate", None)
        if gate is not None:
            out = out * gate(x).sigmoid()
        return attn.proj_drop(attn.proj(out))

    # --- extra tokens (VPT) ----------------------------------------------------------------------------------------
    def insert_tokens(self, n: int) -> None:
        """Let every block carry ``n`` more tokens right after the prefix tokens (no position of their own)."""


def adopt(module: nn.Module, source: nn.Module) -> None:
    """Give ``module`` the children, parameters, buffers and plain attributes of ``source`` under their own names, so
    that it replaces ``source`` with the same state-dict keys and can be used where ``source``'s code expects it."""
    for name, child in source._modules.items():
        module.add_module(name, child)
    for name, param in source._parameters.items():
        module.register_parameter(name, param)
    for name, buffer in source._buffers.items():
        module.register_buffer(name, buffer, persistent=name not in source._non_persistent_buffers_set)
    for name, value in vars(source).items():
        if not name.startswith("_") and name != "training" and name not in vars(module):
            setattr(module, name, value)


def relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """(1, heads, N, N) from a relative position table and its index (timm's Swin and BEiT attentions)."""
    n = attn.relative_position_index.shape[0]
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1)
    return table.permute(2, 0, 1).contiguous().unsqueeze(0)


def pad_extra_tokens(bias: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """``bias`` (..., N, N) with n zero rows and columns inserted at ``start``: extra tokens without a bias."""
    if not n:
        return bias
    zero_rows = bias.new_zeros(*bias.shape[:-2], n, bias.shape[-1])
    bias = torch.cat([bias[..., :start, :], zero_rows, bias[..., start:, :]], dim=-2)
    zero_cols = bias.new_zeros(*bias.shape[:-1], n)
    return torch.cat([bias[..., :start], zero_cols, bias[..., start:]], dim=-1)


def attend(attn: nn.Module, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention at the attention's scale and dropout, with an additive mask (None: none)."""
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=attn.scale)


class ExtraTokenAttention(nn.Module):
    """An attention whose position bias gets zero rows and columns for ``n`` extra tokens at ``start`` (VPT's
    prompts on a model with relative position bias): the extra tokens attend and are attended without a bias.

    It holds the wrapped attention's own tensors under their own names (:func:`adopt`) and computes with the
    ``family``'s attention helpers.
    """

    def __init__(self, attn: nn.Module, family: type[Family], start: int, n: int):
        super().__init__()
        adopt(self, attn)
        self.family = family
        self.extra_start = start
        self.extra_tokens = n

    def forward(self, x, **kwargs):
        q, k, v = self.family.qkv(self, x, **kwargs)
        bias = self.family.logit_bias(self, **kwargs)
        if bias is not None:
            bias = pad_extra_tokens(bias, self.extra_start, self.extra_tokens).to(q.dtype)
        return self.family.project(self, attend(self, q, k, v, bias), x)
