"""The common currency of the data package: :class:`Samples`, :class:`DatasetSplits` and their image check."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .images import check_image
from .tasks import TaskSpec


@dataclass
class Samples:
    """Images with their names and labels.

    ``names`` are what a submission CSV writes; each ``sources`` entry is an image file path or an ``HxW`` /
    ``HxWx3`` uint8 array; ``labels`` is ``(n, C)`` uint8 (multi-label), ``(n,)`` int64 (single-label) or None.
    ``origins``: where array sources were decoded from, the file of each (None when unknown). ``masks``
    (segmentation): each image's label mask, a file path or an ``HxW`` integer array of raw mask values (the task's
    ``values``); None when unlabelled or not a segmentation.
    """

    names: list[str]
    sources: list
    labels: np.ndarray | None = None
    origins: list[str] | None = None
    masks: list | None = None

    def __post_init__(self):
        if len(self.names) != len(self.sources) or (self.labels is not None and len(self.labels) != len(self.names)):
            raise ValueError("Samples: names, sources and labels must have the same length")
        if self.origins is not None and len(self.origins) != len(self.names):
            raise ValueError("Samples: origins must have one file per sample")
        if self.masks is not None and len(self.masks) != len(self.names):
            raise ValueError("Samples: masks must have one mask per sample")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def files(self) -> list[str] | None:
        """The image file of every sample (its source, or the file its array was decoded from); None if unknown."""
        if self.origins is not None:
            return self.origins
        return None if any(isinstance(s, np.ndarray) for s in self.sources) else [str(s) for s in self.sources]

    def subset(self, indices: Iterable[int]) -> Samples:
        """The samples at ``indices`` (in that order; repeats allowed)."""
        return Samples(
            [self.names[i] for i in indices],
            [self.sources[i] for i in indices],
            None if self.labels is None else self.labels[np.asarray(indices, dtype=np.int64)],
            None if self.origins is None else [self.origins[i] for i in indices],
            None if self.masks is None else [self.masks[i] for i in indices],
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

    def with_val_per_class(self, count: int, seed: int) -> DatasetSplits:
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
        merged = Samples(
            self.train.names + [self.val.names[i] for i in extra],
            self.train.sources + [self.val.sources[i] for i in extra],
            None if self.train.labels is None else np.concatenate([self.train.labels, self.val.labels[extra]]),
            None
            if self.train.origins is None or self.val.origins is None
            else self.train.origins + [self.val.origins[i] for i in extra],
            None
            if self.train.masks is None or self.val.masks is None
            else self.train.masks + [self.val.masks[i] for i in extra],
        )
        return DatasetSplits(self.task, merged, None, self.test)


def check_images(splits: DatasetSplits, show: int = 3) -> None:
    """:func:`check_files` over every image file of ``splits``."""
    check_files(
        [s for part in (splits.train, splits.val, splits.test) if part is not None for s in part.sources],
        f"images of task {splits.task.name!r}",
        show,
    )


def check_files(sources: list, what: str, show: int = 3) -> None:
    """Fail before any training or prediction: one :class:`UserError` listing the files among ``sources`` (arrays
    are skipped) that do not exist (first ``show`` and a count), else the first that cannot be read as an image
    (:func:`~medpeft.data.images.check_image`: headers, no pixel decoding)."""
    paths = list(dict.fromkeys(s for s in sources if isinstance(s, (str, os.PathLike))))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise UserError(
            f"{len(missing)} of {len(paths)} {what} are missing: {', '.join(map(str, missing[:show]))}{more}"
        )
    for path in paths:
        check_image(path)
