"""Image transforms of the MedFMC recipe: RandomResizedCrop + flip for training, a square resize for evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_normalized_tensor(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """PIL image or uint8 HxWxC array -> normalised float32 CxHxW tensor."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def square_resize(img_size: int) -> v2.Resize:
    """Resize to ``img_size`` x ``img_size`` (aspect ratio not kept, no crop), bicubic, antialiased."""
    return v2.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC, antialias=True)


def train_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic) + horizontal flip + normalisation."""
    crop = v2.RandomResizedCrop(
        img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return v2.Compose([crop, v2.RandomHorizontalFlip(0.5), to_normalized_tensor(mean, std)])


def eval_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Square bicubic resize + normalisation (the MedFMC test pipeline)."""
    return v2.Compose([square_resize(img_size), to_normalized_tensor(mean, std)])


def joint_train_transform(img_size: int, scale=(0.25, 1.0)) -> v2.Compose:
    """Segmentation training: one random scale-crop (RandomResizedCrop, area ``scale``, ratio 3/4-4/3) and
    horizontal flip applied to an image and its mask together (torchvision's ``tv_tensors``): the image is resized
    bicubic, the mask nearest-neighbour, so every mask value stays one of the original labels."""
    crop = v2.RandomResizedCrop(
        img_size, scale=scale, ratio=(3 / 4, 4 / 3), interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return v2.Compose([crop, v2.RandomHorizontalFlip(0.5)])
