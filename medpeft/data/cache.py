"""Decode-once cache for evaluation images.

An eval set is evaluated many times in a benchmark (val every epoch of every run, test once per run), so each image
is decoded and square-resized once per (source, size) and reused. The in-memory layer is per process (DataLoader
workers each fill their own: use ``num_workers=0``, ``persistent_workers=True`` or a ``directory``) and bounded:
the least recently used images leave it beyond ``memory_mb``; the optional on-disk layer is shared by processes
and runs, and is where evicted images come back from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from ..errors import UserError
from .images import read_image
from .transforms import square_resize


class ResizedImageCache:
    """Square-resized uint8 ``(S, S, 3)`` images, exactly as :func:`eval_transform` resizes them.

    In memory, at most ``memory_mb`` of images (least recently used out first): file sources by (absolute path,
    size), array sources by (a digest of their bytes, shape, size), so the same pixels loaded again by another run
    hit and nothing holds the run's arrays. With ``directory``, file sources are also kept on disk as one ``.npy``
    per (absolute path, mtime, file size, size): an edited file is decoded again.
    """

    def __init__(self, directory: str | Path | None = None, memory_mb: float = 1024):
        self.directory = None if directory is None else Path(directory)
        self._memory = LRUCache(maxsize=int(memory_mb * 2**20), getsizeof=lambda image: image.nbytes)

    def get(self, source: str | Path | np.ndarray, img_size: int) -> np.ndarray:
        """The image of ``source`` resized to ``img_size`` x ``img_size`` x 3, uint8."""
        if isinstance(source, np.ndarray):
            key = (array_digest(source), img_size)
            make = lambda: _resized(source, img_size)  # noqa: E731
        else:
            key = (os.path.abspath(source), img_size)
            make = (lambda: self._from_disk(*key)) if self.directory else (lambda: _resized(key[0], img_size))
        image = self._memory.get(key)
        return image if image is not None else remember(self._memory, key, make())

    def _from_disk(self, path: str, img_size: int) -> np.ndarray:
        try:
            stat = os.stat(path)
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror}") from e
        key = f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\0{img_size}"
        file = self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
        try:
            image = np.load(file)
            if image.shape == (img_size, img_size, 3) and image.dtype == np.uint8:
                return image
        except (OSError, ValueError, EOFError):  # absent or damaged: decode again
            pass
        image = _resized(path, img_size)
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, image)
            os.replace(tmp, file)
        except OSError as e:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
            raise UserError(f"cannot write the image cache in {self.directory}: {e.strerror or e}") from e
        return image


def remember(memory: LRUCache, key, value):
    """Keep ``value`` in ``memory`` unless it alone is larger than the whole budget; return it."""
    if memory.getsizeof(value) <= memory.maxsize:
        memory[key] = value
    return value


def array_digest(array: np.ndarray) -> str:
    """A digest of an array's shape, dtype and bytes."""
    h = hashlib.blake2b(repr((array.shape, str(array.dtype))).encode(), digest_size=20)
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def _resized(source, img_size: int) -> np.ndarray:
    return np.array(square_resize(img_size)(read_image(source)))
