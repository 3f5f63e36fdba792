"""A bench in MLflow: one parent run per bench folder, its runs as children, their ``selected`` tags, the summaries.

The parent is found again by the bench folder's path (tag ``medpeft.bench``), so a resumed bench, any executor and
``--summarize`` log under the same parent. The children are logged by whoever runs them
(:class:`~medpeft.tracking.MlflowRun` in the worker: this process, a Ray worker, a SLURM job); a finished run with
no finished child (run before tracking was on, or whose logging was cut short) is logged from its files
(:meth:`BenchTracking.backfill`). A run key has at most one child under a parent.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import UserError
from ..record import RunRecord
from ..tracking import (
    KEY_TAG,
    SELECTED_TAG,
    GuardedClient,
    MlflowRun,
    MlflowTarget,
    connect,
    first_line,
    guarded,
    logged_runs,
    terminate,
)
from ..version import __version__
from .config import BenchConfig
from .store import BenchStore

BENCH_TAG, BENCH_ID_TAG = "medpeft.bench", "medpeft.bench_id"
SUMMARIES = ("summary.md", "summary.csv")


def tracking_target(config: BenchConfig, out: str | Path) -> MlflowTarget | None:
    """The MLflow experiment of a tracked bench, its store checked (before anything runs); None if untracked."""
    if config.mlflow is None:
        return None
    return connect(config.mlflow, config.mlflow_experiment or Path(out).resolve().name)


def open_tracking(target: MlflowTarget | None, store: BenchStore) -> BenchTracking | None:
    """The bench's parent run, with every finished run of the folder logged as its child (None if untracked)."""
    if target is None:
        return None
    tracking = BenchTracking(target, store.out)
    tracking.backfill(store.records.values(), store.run_dir)
    return tracking


class BenchTracking(GuardedClient):
    """The parent run of the bench in ``out`` (created on first use) and what is known of its finished children:
    their run ids and ``selected`` tags, by run key."""

    def __init__(self, target: MlflowTarget, out: str | Path):
        out = Path(out).resolve()
        super().__init__(
            target.uri,
            f"the bench {out}",
            "the bench goes on; its files are complete (run it again to log what is missing)",
        )
        bench_id = hashlib.sha256(str(out).encode()).hexdigest()[:16]
        try:
            found = self.client.search_runs(
                [target.experiment_id],
                f"tags.`{BENCH_ID_TAG}` = '{bench_id}'",
                order_by=["attributes.start_time ASC"],
                max_results=1,
            )
            parent = (
                found[0]
                if found
                else self.client.create_run(
                    target.experiment_id,
                    run_name=out.name,
                    tags={BENCH_TAG: str(out), BENCH_ID_TAG: bench_id, "medpeft.version": __version__},
                )
            )
            self.target = dataclasses.replace(target, parent_run_id=parent.info.run_id)
            children = [run for run in logged_runs(self.client, self.target) if KEY_TAG in run.data.tags]
        except Exception as err:  # the store answered the probe: this is the store's own error
            raise UserError(f"--mlflow {target.uri}: cannot open the bench's parent run ({first_line(err)})") from None
        finished = [run for run in children if run.info.status == "FINISHED"]
        self.run_ids = {run.data.tags[KEY_TAG]: run.info.run_id for run in finished}
        self.selected = {run.data.tags[KEY_TAG]: run.data.tags.get(SELECTED_TAG) for run in finished}

    @guarded
    def set_status(self, status: str) -> None:
        """RUNNING while the bench runs; FINISHED or FAILED at its end."""
        if status == "RUNNING":
            self.client.update_run(self.target.parent_run_id, status)
        else:
            terminate(self.client, self.target.parent_run_id, status)

    @guarded
    def backfill(self, records: Iterable[RunRecord], run_dir: Callable[[RunRecord], Path]) -> None:
        """Log every finished run (``records``: all of the bench folder's) that has no finished child yet; the
        children of other keys are forgotten (a worker that reruns such a key replaces its child)."""
        known = {}
        for record in records:
            known[record.key] = self.run_ids.get(record.key) or MlflowRun(self.target).replay(record, run_dir(record))
        self.run_ids = {key: run_id for key, run_id in known.items() if run_id is not None}
        self.selected = {key: self.selected.get(key) for key in self.run_ids}

    @guarded
    def update(self, records: Iterable[RunRecord]) -> None:
        """Bring the children's ``selected`` tags in line with ``records`` (runs whose cell is complete)."""
        for record in records:
            value = None if record.selected is None else str(record.selected).lower()
            if value is None or self.selected.get(record.key) == value:
                continue
            if record.key not in self.run_ids:  # logged by a worker while this bench runs
                found = logged_runs(self.client, self.target, record.key)
                if not found:
                    continue
                self.run_ids[record.key] = found[0].info.run_id
            self.client.set_tag(self.run_ids[record.key], SELECTED_TAG, value)
            self.selected[record.key] = value

    @guarded
    def log_summaries(self, out: str | Path) -> None:
        """``summary.md`` and ``summary.csv`` as the parent's artifacts."""
        for name in SUMMARIES:
            if (Path(out) / name).is_file():
                self.client.log_artifact(self.target.parent_run_id, str(Path(out) / name))
