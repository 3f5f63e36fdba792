"""The common currency of the data package: :class:`Samples`, :class:`DatasetSplits` and :func:`load_image`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import UserError
from .tasks import TaskSpec


@dataclass
class Samples:
    """Images with their names and labels.

    ``names`` are what a submission CSV writes; each ``sources`` entry is an image file path or an ``HxW`` /
    ``HxWx3`` uint8 array; ``labels`` is ``(n, C)`` uint8 (multi-label), ``(n,)`` int64 (single-label) or None.
    ``origins``: where array sources were decoded from, the file of each (None when unknown).
    """

    names: list[str]
    sources: list
    labels: np.ndarray | None = None
    origins: list[str] | None = None

    def __post_init__(self):
        if len(self.names) != len(self.sources) or (self.labels is not None and len(self.labels) != len(self.names)):
            raise ValueError("Samples: names, sources and labels must have the same length")
        if self.origins is not None and len(self.origins) != len(self.names):
            raise ValueError("Samples: origins must have one file per sample")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def files(self) -> list[str] | None:
        """The image file of every sample (its source, or the file its array was decoded from); None if unknown."""
        if self.origins is not None:
            return self.origins
        return None if any(isinstance(s, np.ndarray) for s in self.sources) else [str(s) for s in self.sources]

    def subset(self, indices) -> Samples:
        """The samples at ``indices`` (in that order; repeats allowed)."""
        return Samples(
            [self.names[i] for i in indices],
            [self.sources[i] for i in indices],
            None if self.labels is None else self.labels[np.asarray(indices, dtype=np.int64)],
            None if self.origins is None else [self.origins[i] for i in indices],
        )


def stack_labels(labels: list, task: TaskSpec) -> np.ndarray:
    """Labels as :class:`Samples` holds them: ``(n, C)`` uint8 or ``(n,)`` int64."""
    if task.multilabel:
        return np.asarray(labels, dtype=np.uint8).reshape(len(labels), task.num_classes)
    return np.asarray(labels, dtype=np.int64).reshape(len(labels))


@dataclass
class DatasetSplits:
    """A task's train, val and (optional) test samples."""

    task: TaskSpec
    train: Samples
    val: Samples | None
    test: Samples | None = None

    def check_images(self, show: int = 3) -> None:
        """See :func:`check_images`."""
        check_images(self, show)

    def with_val_per_class(self, count: int, seed) -> DatasetSplits:
        """Validation capped at ``count`` images per class (multi-label: positives per class), drawn at random."""
        from .splits import per_class_few_shot

        if self.val is None or self.val.labels is None:
            return self
        keep, _ = per_class_few_shot(self.val.labels, count, seed)
        return DatasetSplits(self.task, self.train, self.val.subset(np.unique(keep)), self.test)

    def with_val_in_train(self) -> DatasetSplits:
        """Train on train + the val images not already in train (by name); no val split (for a refit)."""
        names = set(self.train.names)
        extra = [i for i, name in enumerate(self.val.names) if name not in names]
        merged = Samples(self.train.names + [self.val.names[i] for i in extra],
                         self.train.sources + [self.val.sources[i] for i in extra],
                         None if self.train.labels is None else np.concatenate([self.train.labels,
                                                                                self.val.labels[extra]]),
                         None if self.train.origins is None or self.val.origins is None
                         else self.train.origins + [self.val.origins[i] for i in extra])
        return DatasetSplits(self.task, merged, None, self.test)


def check_images(splits: DatasetSplits, show: int = 3) -> None:
    """Raise one :class:`UserError` listing the image files (first ``show`` and a count) that do not exist."""
    paths = [s for part in (splits.train, splits.val, splits.test) if part is not None
             for s in part.sources if isinstance(s, (str, os.PathLike))]
    missing = list(dict.fromkeys(p for p in paths if not os.path.isfile(p)))
    if missing:
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise UserError(f"{len(missing)} of {len(set(paths))} images of task {splits.task.name!r} are missing: "
                        f"{', '.join(map(str, missing[:show]))}{more}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):  # 16/32-bit grayscale: keep the top 8 bits of 16, as OpenCV does
        img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        raise ValueError("32-bit float images are not supported; save them as 8-bit")
    return img.convert("RGB")


def load_image(source) -> Image.Image:
    """An RGB PIL image from a file path or a uint8 array (grayscale, RGBA and palette images become RGB)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))):
            raise UserError(f"image arrays must be uint8 HxW or HxWx(1|3|4), got {source.dtype} {source.shape}")
        return Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source).convert("RGB")
    try:
        with Image.open(source) as img:
            return _to_rgb(img)
    except FileNotFoundError:
        raise UserError(f"cannot read image {source}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise UserError(f"cannot read image {source}: {reason}") from e

