"""One run of a bench, wherever it runs (this process, a Ray worker, a SLURM job): idempotent by key."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import ResizedImageCache
from ..evaluate import FeatureCache
from ..experiment import run_tracked
from ..record import RUN_FILE, RunSpec, read_record
from ..tracking import MlflowRun, MlflowTarget


@dataclass(frozen=True)
class RunJob:
    """What a worker needs besides the spec: the bench folder (on a file system every worker sees), the folder of
    the decode-once cache (None: decode at every evaluation), whether to keep frozen features there too, whether
    each node keeps its own cache (``cache_dir/<host>``: a cluster's nodes never share cache files), the torch
    threads (the run's CPU share), whether to show each run's epoch progress, and where to log each run in MLflow
    (the bench's parent run; None: untracked)."""

    out: str
    cache_dir: str | None = None
    feature_cache: bool = True
    node_cache: bool = False
    threads: int | None = None
    progress: bool = False
    tracking: MlflowTarget | None = None


#: The decode-once and feature caches of the cache folder in use, reused by the runs this process executes (one
#: folder at a time: a bench in another folder replaces them; :func:`release_caches` frees them).
_CACHES: dict[str, tuple[ResizedImageCache, FeatureCache]] = {}


def release_caches() -> None:
    """Free the caches this process keeps for its runs (their files stay)."""
    _CACHES.clear()


def _caches(folder: Path) -> tuple[ResizedImageCache, FeatureCache]:
    if str(folder) not in _CACHES:
        release_caches()
        _CACHES[str(folder)] = ResizedImageCache(folder), FeatureCache(folder / "features")
    return _CACHES[str(folder)]


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` inside (None: as is), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute(spec: RunSpec | dict[str, Any], job: RunJob, worker: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``spec`` into ``job.out`` and return its record (as a dict, ready to ship between processes).

    A run whose directory already holds a finished run is not redone: its record is returned (a retried task
    whose first attempt finished, or a run another worker completed), and logged if tracked and not logged yet.
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    run_dir = Path(job.out) / spec.run_dir
    if (run_dir / RUN_FILE).is_file():
        record = read_record(run_dir)
        if job.tracking is not None:
            MlflowRun(job.tracking).replay_if_missing(record, run_dir)
        return record.to_dict()
    cache = features = None
    if job.cache_dir is not None:
        cache, features = _caches(Path(job.cache_dir) / socket.gethostname() if job.node_cache else Path(job.cache_dir))
    features = features if job.feature_cache else None
    tracker = None if job.tracking is None else MlflowRun(job.tracking)
    with _torch_threads(job.threads):
        return run_tracked(
            spec, run_dir, tracker, cache=cache, features=features, progress=job.progress, worker=worker
        ).to_dict()
