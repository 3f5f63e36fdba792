"""Seeded randomness that leaves the process's global random state as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Inside, torch's global generators (CPU, and ``device``'s if it is a GPU) start from ``seed``; after, they are
    back where they were (:func:`torch.random.fork_rng`). None: as is, nothing forked."""
    if seed is None:
        yield
        return
    device = torch.device(device) if device is not None else None
    gpus = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        yield
