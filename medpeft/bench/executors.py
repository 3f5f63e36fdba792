"""Where a bench's runs execute. The unit of work is one run (its :class:`~medpeft.record.RunSpec`), idempotent by
key; an executor takes specs and hands back outcomes as runs finish. ``local`` runs them one after the other in
this process (the default); ``ray`` and ``slurm`` spread them over a cluster (:mod:`.ray_executor`,
:mod:`.slurm_executor`); :func:`~.executor_choice.make_executor` picks one by name."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..record import RunRecord, RunSpec
from .worker import RunJob, execute, release_caches


@dataclass
class Outcome:
    """A run that ended: its record, or the one-line error that stopped it."""

    spec: RunSpec
    record: RunRecord | None = None
    error: str | None = None


class Executor:
    """Base class: ``start(job)``, then ``submit(spec)`` any number of times, ``flush()`` after each round of
    submissions, and ``next()`` for each outcome while ``pending()``; ``close()`` cancels what is left. ``waits``
    is False for an executor that returns after submitting (a later ``medpeft bench`` collects the runs);
    ``node_cache``: runs keep their caches per node (a cluster)."""

    name = ""
    waits = True
    node_cache = False

    def start(self, job: RunJob) -> None:
        self.job = job

    def submit(self, spec: RunSpec) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Send what ``submit`` has gathered (an executor that submits in batches)."""

    def pending(self) -> int:
        raise NotImplementedError

    def next(self) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        """Cancel outstanding runs (finished ones are kept)."""


class LocalExecutor(Executor):
    """Runs in this process, one after the other, in submission order; ``cpus_per_run`` sets torch's threads."""

    name = "local"

    def __init__(self, cpus_per_run: float | None = None):
        self.threads = cpu_threads(cpus_per_run) if cpus_per_run is not None else None
        self.queue: collections.deque[RunSpec] = collections.deque()

    def start(self, job: RunJob) -> None:
        self.job = dataclasses.replace(job, threads=self.threads or job.threads)

    def submit(self, spec: RunSpec) -> None:
        self.queue.append(spec)

    def pending(self) -> int:
        return len(self.queue)

    def next(self) -> Outcome:
        spec = self.queue.popleft()
        try:
            return Outcome(spec, RunRecord.from_dict(execute(spec, self.job)))
        except UserError as err:
            return Outcome(spec, error=str(err))

    def close(self) -> None:
        self.queue.clear()
        release_caches()


def cpu_threads(cpus: float) -> int:
    """Torch threads for a run given ``cpus`` cores (at least one): runs sharing a machine share its cores."""
    if not cpus > 0:
        raise UserError(f"cpus per run must be > 0 (got {cpus})")
    return max(1, int(cpus))
