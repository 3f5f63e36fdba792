"""The base of the families whose blocks keep LayerScale as bare γ vectors (``gamma_1``, ``gamma_2``) and whose
attentions add q/v biases beside a bias-free qkv Linear: timm's ``Eva`` (:mod:`.eva`) and ``Beit`` (:mod:`.beit`)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Family


class LayerScaleFamily(Family):
    """A :class:`Family` whose blocks scale their branches by γ parameters (``gamma_1``, ``gamma_2``; None without
    LayerScale) rather than by ``ls1``/``ls2`` modules: the MLP branch's scale is ``gamma_2`` as a :class:`GammaScale`.
    The model is prepared with :func:`separate_qkv_bias`, so that a method wrapping the qkv Linear is called."""

    @classmethod
    def prepare(cls, model):
        separate_qkv_bias(model)

    def mlp_branch(self, block):
        return block.norm2, block.mlp, gamma_scale(block, "gamma_2")

    def set_mlp_branch(self, block, branch):
        block.mlp = branch
        block.norm2 = nn.Identity()
        unscale(block, "gamma_2")


def separate_qkv_bias(model: nn.Module) -> None:
    """Where an attention adds its q/v biases around its qkv Linear (``F.linear(x, qkv.weight, bias)``), add them
    after calling the Linear instead (timm's ``qkv_bias_separate``): the same function, and a method that wraps the
    Linear (LoRA, SSF, peft tuners) is then called."""
    for module in model.modules():
        if getattr(module, "q_bias", None) is not None and hasattr(module, "qkv_bias_separate"):
            module.qkv_bias_separate = True


class GammaScale(nn.Module):
    """A block's LayerScale vector γ as a module: ``γ · x``."""

    def __init__(self, gamma: nn.Parameter):
        super().__init__()
        self.gamma = gamma

    def forward(self, x):
        return self.gamma * x


def gamma_scale(block: nn.Module, name: str) -> GammaScale | None:
    """The block's LayerScale parameter ``name`` as a :class:`GammaScale` (None if the block has none)."""
    gamma = getattr(block, name, None)
    return None if gamma is None else GammaScale(gamma)


def unscale(block: nn.Module, name: str) -> None:
    """Leave a constant 1 (a non-persistent buffer) in place of the block's LayerScale parameter ``name``, which a
    :class:`GammaScale` from :func:`gamma_scale` now holds."""
    gamma = getattr(block, name, None)
    if gamma is not None:
        del block._parameters[name]
        block.register_buffer(name, torch.ones_like(gamma.detach()), persistent=False)
