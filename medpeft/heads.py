"""Dense heads: per-pixel class logits from the backbone's patch map (:meth:`~medpeft.families.Family.patch_map`).

Every head takes the (B, D, h, w) map of the last block's patch tokens (prompt, prefix and register tokens left
out) and returns (B, C, S, S) logits at the input size S (a final bilinear resize where its own upsampling does not
land on S exactly, e.g. patch 14):

- ``setr-pup`` (Zheng et al., 2021; the EPT paper's Table A.6): LayerNorm on the tokens, then four stages of
  3×3 conv (256 channels, no bias) + BatchNorm + ReLU + 2× bilinear upsampling, then a 1×1 conv to the classes;
- ``setr-naive``: LayerNorm, 1×1 conv (256, no bias) + BatchNorm + ReLU, 1×1 conv to the classes, bilinear
  upsampling to S;
- ``linear`` (DINOv2's linear segmentation): BatchNorm and a 1×1 conv (a linear map per patch), bilinear
  upsampling to S.

The classifier convolution starts at N(0, 0.01²) with zero bias (MMSegmentation's ``conv_seg``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .errors import UserError

CHANNELS = 256  #: SETR's decoder width


def _classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, D, h, w) map (each patch token normalised, as SETR's head does)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DenseHead(nn.Module):
    """``layers`` on the patch map, then a bilinear resize to ``img_size`` × ``img_size`` (if not there)."""

    def __init__(self, layers: list[nn.Module], img_size: int):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.img_size = img_size

    def forward(self, x):
        x = self.layers(x)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x


def setr_pup(in_dim: int, num_classes: int, img_size: int) -> DenseHead:
    layers: list[nn.Module] = [ChannelNorm(in_dim)]
    for i in range(4):
        layers += _conv_bn_relu(in_dim if i == 0 else CHANNELS, CHANNELS, 3)
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return DenseHead(layers + [_classifier(CHANNELS, num_classes)], img_size)


def setr_naive(in_dim: int, num_classes: int, img_size: int) -> DenseHead:
    layers = [ChannelNorm(in_dim), *_conv_bn_relu(in_dim, CHANNELS, 1), _classifier(CHANNELS, num_classes)]
    return DenseHead(layers, img_size)


def linear(in_dim: int, num_classes: int, img_size: int) -> DenseHead:
    return DenseHead([nn.BatchNorm2d(in_dim), _classifier(in_dim, num_classes)], img_size)


#: The dense heads by name (``--head``).
HEADS = {"setr-pup": setr_pup, "setr-naive": setr_naive, "linear": linear}
DEFAULT_HEAD = "setr-pup"


def check_head(name: str) -> None:
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}: choose from {', '.join(HEADS)}")


def make_dense_head(name: str, in_dim: int, num_classes: int, img_size: int) -> DenseHead:
    """The dense head ``name`` of :data:`HEADS` on ``in_dim``-wide patch tokens, giving ``img_size``² logits."""
    check_head(name)
    return HEADS[name](in_dim, num_classes, img_size)
