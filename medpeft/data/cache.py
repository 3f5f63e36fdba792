"""Decode-once cache for evaluation images.

An eval set is evaluated many times in a benchmark (val every epoch of every run, test once per run), so each image
is decoded and square-resized once per (source, size) and reused. The in-memory layer is per process (DataLoader
workers each fill their own: use ``num_workers=0``, ``persistent_workers=True`` or a ``directory``); the optional
on-disk layer is shared by processes and runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .images import read_image
from .transforms import square_resize


class ResizedImageCache:
    """Square-resized uint8 ``(S, S, 3)`` images, exactly as :func:`eval_transform` resizes them.

    File sources are kept in memory by (absolute path, size) and, with ``directory``, on disk as one ``.npy`` per
    (absolute path, mtime, file size, size): an edited file is decoded again. Array sources are kept in memory only,
    by object identity (the cache holds a reference, so the identity cannot be reused).
    """

    def __init__(self, directory=None):
        self.directory = None if directory is None else Path(directory)
        self._files: dict = {}
        self._arrays: dict = {}

    def get(self, source, img_size: int) -> np.ndarray:
        """The image of ``source`` resized to ``img_size`` x ``img_size`` x 3, uint8."""
        if isinstance(source, np.ndarray):
            key = (id(source), img_size)
            if key not in self._arrays:
                self._arrays[key] = (source, _resized(source, img_size))
            return self._arrays[key][1]
        key = (os.path.abspath(source), img_size)
        if key not in self._files:
            self._files[key] = self._from_disk(*key) if self.directory else _resized(key[0], img_size)
        return self._files[key]

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


def _resized(source, img_size: int) -> np.ndarray:
    return np.array(square_resize(img_size)(read_image(source)))
