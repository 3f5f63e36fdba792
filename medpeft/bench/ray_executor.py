"""``--executor ray``: each run a Ray task with declared resources, on a local Ray or a cluster joined by address.

A worker or node that dies mid-run is retried by Ray (``max_retries``); a retried run whose first attempt had
finished is not redone (:func:`~medpeft.bench.worker.execute` is idempotent by key). Runs read their images from
``data_root``, which every node must see at the same path, and keep their caches per node.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from ..errors import UserError
from ..record import RunRecord, RunSpec
from .executors import Executor, Outcome, cpu_threads
from .worker import RunJob, execute


def _run(spec: dict[str, Any], job: RunJob) -> dict[str, Any]:
    """The Ray task: one run, its record as a dict (where it ran: host, node id, pid)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return execute(spec, job, worker={"host": socket.gethostname(), "node_id": node, "pid": os.getpid()})


class RayExecutor(Executor):
    """Runs as Ray tasks. ``address``: None is Ray's default (the Ray this process already joined, else one
    running on this machine, else a new local one), an address or ``auto`` joins a running cluster (``RAY_ADDRESS``
    too). ``gpus_per_run`` below 1 packs several runs on one GPU (0.25: four); ``cpus_per_run`` also sets each
    run's torch threads."""

    name = "ray"
    node_cache = True

    def __init__(
        self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0, max_retries: int = 2
    ):
        self.threads = cpu_threads(cpus_per_run)
        if gpus_per_run < 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run)):
            raise UserError(f"gpus per run must be a fraction of one GPU or a whole number (got {gpus_per_run})")
        if max_retries < 0:
            raise UserError(f"max retries must be >= 0 (got {max_retries})")
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.resources = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run}
        self.max_retries = max_retries
        self.running: dict[Any, RunSpec] = {}
        self.owns_ray = False

    def start(self, job: RunJob) -> None:
        import ray

        self.job = dataclasses.replace(job, threads=self.threads, node_cache=True)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except ConnectionError as err:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {err}") from None
            self.owns_ray = True
            if self.address is None:
                self._check_fits(ray.cluster_resources())
        self.task = ray.remote(_run).options(**self.resources, max_retries=self.max_retries, retry_exceptions=False)

    def _check_fits(self, total: dict[str, float]) -> None:
        """A run that asks more than the local Ray has would wait forever: refuse it (a cluster joined by address
        may grow, so it is not checked)."""
        for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            if self.resources[key] > total.get(name, 0):
                self.close()
                raise UserError(
                    f"a run asks {self.resources[key]:g} {name}(s) but this machine's Ray has "
                    f"{total.get(name, 0):g}: lower --{name.lower()}s-per-run"
                )

    def submit(self, spec: RunSpec) -> None:
        self.running[self.task.remote(spec.to_dict(), self.job)] = spec

    def pending(self) -> int:
        return len(self.running)

    def next(self) -> Outcome:
        import ray
        from ray.exceptions import RayError, RayTaskError

        (ref,), _ = ray.wait(list(self.running), num_returns=1)
        spec = self.running.pop(ref)
        try:
            return Outcome(spec, RunRecord.from_dict(ray.get(ref)))
        except RayTaskError as err:
            if isinstance(err.cause, UserError):
                return Outcome(spec, error=str(err.cause))
            raise
        except RayError as err:  # the worker or its node died, and the retries too
            lost = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return Outcome(spec, error=f"lost after {self.max_retries} retries ({type(err).__name__}: {lost})")

    def close(self) -> None:
        """Cancel the runs still queued or running (their workers are killed), and stop a Ray this started."""
        import ray

        if not ray.is_initialized():
            return
        for ref in self.running:
            ray.cancel(ref, force=True)
        self.running.clear()
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False
