"""A torch Dataset over :class:`Samples`, for training and (cached) evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .cache import ResizedImageCache
from .images import read_image
from .samples import Samples
from .tasks import TaskSpec
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    joint_train_transform,
    to_normalized_tensor,
    train_transform,
)


class ImageDataset(Dataset):
    """Items ``(image_tensor, target, index)``.

    ``target``: float32 vector (multi-label) or int64 scalar (single-label); for unlabelled samples, zeros when
    ``task`` is multi-label, else -1. With a ``cache``, images come from ``cache.get(source, img_size)`` (already
    resized) and ``transform`` must only convert and normalise (see :func:`eval_dataset`).
    """

    def __init__(
        self,
        samples: Samples,
        transform: Callable,
        cache: ResizedImageCache | None = None,
        *,
        img_size: int | None = None,
        task: TaskSpec | None = None,
    ):
        if cache is not None and img_size is None:
            raise ValueError("ImageDataset: a cache needs img_size")
        self.samples, self.transform, self.cache, self.img_size, self.task = samples, transform, cache, img_size, task

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        source = self.samples.sources[index]
        image = read_image(source) if self.cache is None else self.cache.get(source, self.img_size)
        return self.transform(image), self._target(index), index

    def _target(self, index: int) -> torch.Tensor:
        labels = self.samples.labels
        if labels is None:
            multilabel = self.task is not None and self.task.multilabel
            return torch.zeros(self.task.num_classes) if multilabel else torch.tensor(-1)
        if labels.ndim == 2:
            return torch.as_tensor(labels[index], dtype=torch.float32)
        return torch.tensor(int(labels[index]))


def eval_dataset(
    samples: Samples,
    img_size: int,
    cache: ResizedImageCache | None = None,
    *,
    task: TaskSpec | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """Square-resized, normalised images; identical tensors with or without ``cache``."""
    if cache is None:
        return ImageDataset(samples, eval_transform(img_size, mean, std), task=task)
    return ImageDataset(samples, to_normalized_tensor(mean, std), cache, img_size=img_size, task=task)


def train_dataset(
    samples: Samples,
    img_size: int,
    *,
    task: TaskSpec | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """Randomly cropped and flipped images, decoded from their source every time."""
    return ImageDataset(samples, train_transform(img_size, mean, std), task=task)


class MaskDataset(Dataset):
    """Segmentation training items ``(image_tensor, mask, index)``: the image and its class-index mask (int64
    ``img_size``²) through one random scale-crop and flip (:func:`~medpeft.data.transforms.joint_train_transform`:
    the mask resized nearest-neighbour), then the image normalised."""

    def __init__(self, samples: Samples, img_size: int, task: TaskSpec, *, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.samples, self.task = samples, task
        self.joint = joint_train_transform(img_size)
        self.normalize = to_normalized_tensor(mean, std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from .seg import read_mask

        image = tv_tensors.Image(torch.from_numpy(np.array(read_image(self.samples.sources[index]))).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(self.samples.masks[index], self.task).astype(np.int64)))
        image, mask = self.joint(image, mask)
        return self.normalize(image.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor), index
