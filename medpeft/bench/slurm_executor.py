"""``--executor slurm``: the pending runs as a SLURM job array through ``submitit``, several runs per job.

Each job runs its runs one after the other and writes only their run directories (each atomically), so jobs on
a shared file system never collide; ``runs.jsonl`` and the summaries are written by the bench that collects
them. Submitted jobs are listed in ``OUT/slurm/jobs.jsonl``: a rerun does not resubmit a run whose job is still
queued or running (a job whose state the scheduler cannot tell yet counts as running).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import append_line, json_line, read_json_lines
from ..record import RUN_FILE, RunSpec, read_record
from .executors import Executor, Outcome, cpu_threads
from .worker import RunJob, execute

JOBS_FILE = "jobs.jsonl"
#: SLURM states of a job that has ended (any other state: queued or running).
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


def _run_job(specs: list[dict[str, Any]], job: RunJob) -> dict[str, str]:
    """One SLURM job: its runs one after the other; returns the one-line errors of those that failed, by key."""
    import submitit

    worker = {"host": socket.gethostname(), "job_id": submitit.JobEnvironment().job_id, "pid": os.getpid()}
    errors = {}
    for spec in specs:
        try:
            execute(spec, job, worker=worker)
        except UserError as err:
            errors[RunSpec.from_dict(spec).key] = str(err)
    return errors


def job_active(folder: Path, cluster: str, job_id: str) -> bool:
    """Whether the job is still queued or running (submitit's local cluster: its controller process lives)."""
    if cluster == "local":
        try:
            return Path(f"/proc/{int(job_id)}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
        except OSError:
            return False
    import submitit

    return submitit.SlurmJob(folder, job_id).state.split()[0] not in ENDED


def in_flight(folder: str | Path) -> set[str]:
    """The keys of the runs whose jobs (listed in ``folder/jobs.jsonl``) are still queued or running."""
    folder = Path(folder)
    return {
        key
        for line in read_json_lines(folder / JOBS_FILE)
        if job_active(folder, line["cluster"], line["job_id"])
        for key in line["keys"]
    }


class SlurmExecutor(Executor):
    """Runs as a SLURM job array (``cluster="local"``: as local processes through submitit, to try a setup without
    SLURM). ``runs_per_job`` runs share one job, one after the other (few-shot runs are short; a job per run would
    spend its time queueing), each with the job's ``cpus_per_run`` cores; ``time_min`` is a job's limit. ``wait``:
    collect the runs as their jobs end; otherwise return once they are submitted."""

    name = "slurm"
    node_cache = True
    poll_s = 2.0

    def __init__(
        self,
        folder: str | Path | None = None,
        partition: str | None = None,
        gpus_per_job: int = 0,
        cpus_per_run: float = 1,
        runs_per_job: int = 1,
        time_min: int = 60,
        wait: bool = False,
        cluster: str = "slurm",
    ):
        self.threads = cpu_threads(cpus_per_run)
        if cluster not in ("slurm", "local"):
            raise UserError(f"unknown SLURM cluster {cluster!r}: choose slurm or local")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError(
                "--executor slurm: sbatch is not on this machine's PATH; submit from a SLURM login node "
                "(or try it here with --slurm-cluster local)"
            )
        for name, value, least in (
            ("gpus per job", gpus_per_job, 0),
            ("runs per job", runs_per_job, 1),
            ("time per job", time_min, 1),
        ):
            if value < least:
                raise UserError(f"{name} must be >= {least} (got {value})")
        self.folder = Path(folder) if folder else None
        self.parameters = {
            "timeout_min": int(time_min),
            "cpus_per_task": math.ceil(cpus_per_run),
            "gpus_per_node": int(gpus_per_job),
            "name": "medpeft",
            "slurm_partition": partition,
        }
        self.runs_per_job, self.waits, self.cluster = runs_per_job, wait, cluster
        self.queued: list[RunSpec] = []
        self.awaited: dict[str, tuple[RunSpec, str]] = {}  # key -> (spec, job id)
        self.jobs: dict[str, Any] = {}  # the jobs this executor submitted
        self.outcomes: list[Outcome] = []
        self.submitted = self.earlier = 0

    def start(self, job: RunJob) -> None:
        import submitit

        self.job = dataclasses.replace(job, threads=self.threads, node_cache=True)
        self.folder = self.folder or Path(job.out) / "slurm"
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        self.executor.update_parameters(**self.parameters)
        self.earlier_jobs = {
            key: line["job_id"]
            for line in read_json_lines(self.folder / JOBS_FILE)
            if job_active(self.folder, line["cluster"], line["job_id"])
            for key in line["keys"]
        }

    def submit(self, spec: RunSpec) -> None:
        earlier = self.earlier_jobs.get(spec.key)  # the job of an earlier bench that still holds this run
        if earlier is None:
            self.queued.append(spec)
        else:
            self.awaited[spec.key] = (spec, earlier)
            self.earlier += 1

    def flush(self) -> None:
        """Submit the queued runs as one job array, ``runs_per_job`` runs per job."""
        if not self.queued:
            return
        packs = [self.queued[i : i + self.runs_per_job] for i in range(0, len(self.queued), self.runs_per_job)]
        self.queued = []
        with self.executor.batch():
            jobs = [self.executor.submit(_run_job, [s.to_dict() for s in pack], self.job) for pack in packs]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for job, pack in zip(jobs, packs):
            self.jobs[job.job_id] = job
            self.awaited.update({s.key: (s, job.job_id) for s in pack})
            append_line(
                self.folder / JOBS_FILE,
                json_line(
                    {"job_id": job.job_id, "cluster": self.cluster, "submitted": now, "keys": [s.key for s in pack]}
                ),
            )
        self.submitted += sum(len(p) for p in packs)

    def pending(self) -> int:
        return len(self.queued) + len(self.awaited) + len(self.outcomes)

    def next(self) -> Outcome:
        while not self.outcomes:
            self._poll()
            if not self.outcomes:
                time.sleep(self.poll_s)
        return self.outcomes.pop(0)

    def _poll(self) -> None:
        """Outcomes for the runs whose directories appeared, then for the runs of jobs that ended without them."""
        ended = {i for i in {i for _, i in self.awaited.values()} if not self._active(i)}
        for key, (spec, job_id) in list(self.awaited.items()):
            run_dir = Path(self.job.out) / spec.run_dir
            if (run_dir / RUN_FILE).is_file():
                self.outcomes.append(Outcome(spec, read_record(run_dir)))
            elif job_id in ended:
                self.outcomes.append(Outcome(spec, error=self._job_error(job_id, key)))
            else:
                continue
            del self.awaited[key]

    def _active(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        return not job.done() if job is not None else job_active(self.folder, self.cluster, job_id)

    def _job_error(self, job_id: str, key: str) -> str:
        from submitit.core.utils import JobPaths, pickle_load

        paths = JobPaths(self.folder, job_id, 0)
        try:
            outcome, value = pickle_load(paths.result_pickle)
        except (OSError, EOFError):
            return f"SLURM job {job_id} ended without finishing the run (log: {paths.stderr})"
        if outcome == "success":
            return value.get(key, f"SLURM job {job_id} did not write the run (log: {paths.stderr})")
        return f"SLURM job {job_id} failed: {str(value).strip().splitlines()[-1]} (log: {paths.stderr})"

    def close(self) -> None:
        """Waiting: cancel the jobs this bench submitted that still hold unfinished runs. Otherwise leave them."""
        if self.waits:
            for job_id in {i for _, i in self.awaited.values() if i in self.jobs}:
                if self._active(job_id):
                    self.jobs[job_id].cancel(check=False)
        self.queued.clear()
        self.awaited.clear()

    def summary(self) -> str:
        """What a bench that does not wait reports after submitting."""
        return (
            f"submitted {self.submitted} run(s) in {len(self.jobs)} SLURM job(s) (listed in "
            f"{self.folder / JOBS_FILE}); {self.earlier} run(s) already in earlier jobs. Once they end, rerun "
            f"this command or `medpeft bench --summarize {Path(self.job.out)}` to collect them"
        )
