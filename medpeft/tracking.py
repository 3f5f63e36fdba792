"""Experiment tracking: what a run tells a tracker (:class:`RunListener`), and MLflow as that tracker.

A run tells its listener when it starts, after every epoch (its history row: :func:`medpeft.train.fit`'s
``on_epoch``) and when it has ended (:func:`track_run`); nothing a listener does reaches what the run computes.
:class:`MlflowRun` makes each medpeft run one MLflow run: params from the spec, per-epoch metrics with
``step=epoch``, the test metrics, tags (the run key, where it ran, the medpeft version) and the run directory's
files as artifacts. In a bench the runs are children of the bench's parent run (:mod:`medpeft.bench.tracking`),
each logged by the process that ran it, exactly once per run key.

The tracking store is checked once, with a short timeout and no retries, before anything trains
(:func:`connect`). A failure after that warns once on stderr and stops that tracker: the run and its files go on
unchanged (a bench logs what is missing when it is run again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .methods import get_method
from .record import RunRecord, RunSpec, submission_name
from .version import __version__

#: How the store is first reached: one try, 10 seconds at most.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
KEY_TAG, KEY_ID_TAG, SELECTED_TAG = "medpeft.key", "medpeft.key_id", "medpeft.selected"
ARTIFACTS = ("run.json", "log.txt")  #: logged with the submission CSV


class RunListener:
    """What a run tells a tracker, in order: :meth:`started`, :meth:`epoch` after each epoch, then :meth:`finished`
    or :meth:`failed`. Every call is a no-op here."""

    def started(self, spec: RunSpec) -> None:
        """Before training."""

    def epoch(self, row: dict[str, Any]) -> None:
        """After each epoch, with its history row (``epoch``, ``lr``, ``train_loss``, ``val_<metric>`` …)."""

    def finished(self, record: RunRecord, run_dir: Path) -> None:
        """Once the run directory is complete."""

    def failed(self, error: BaseException) -> None:
        """When the run stopped with ``error`` (an interruption too)."""


def track_run(
    listener: RunListener, spec: RunSpec, run_dir: str | Path, run: Callable[[Callable[[dict], None]], RunRecord]
) -> RunRecord:
    """``run(on_epoch)`` (a run writing ``run_dir``) with ``listener`` told of its start, epochs and end."""
    listener.started(spec)
    try:
        record = run(listener.epoch)
    except BaseException as err:
        listener.failed(err)
        raise
    listener.finished(record, Path(run_dir))
    return record


@dataclass(frozen=True)
class MlflowTarget:
    """Where runs are logged: a tracking URI, an experiment id and, in a bench, the parent run's id."""

    uri: str
    experiment_id: str
    parent_run_id: str | None = None


def connect(uri: str, experiment: str) -> MlflowTarget:
    """The experiment ``experiment`` (created if new) of the tracking store at ``uri``, after checking that the store
    answers within a short timeout: a one-line error if mlflow is missing or the store cannot be reached."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UserError("--mlflow needs the mlflow package: pip install 'medpeft[mlflow]'") from None
    try:
        with _environment(PROBE_ENV):
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as err:  # connection, store and permission errors have no common type
        raise UserError(
            f"--mlflow {uri}: the tracking store cannot be reached ({first_line(err)}); start it, or check the URI"
        ) from None
    if found is not None and found.lifecycle_stage != "active":
        raise UserError(
            f"--mlflow {uri}: experiment {experiment!r} is deleted there; restore it, or choose another "
            "--mlflow-experiment"
        )
    return MlflowTarget(uri, experiment_id)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


def first_line(err: BaseException) -> str:
    """The gist of an error in one line: the OS error it comes from (``[Errno 111] Connection refused`` under a
    connection error), else the first line of its message."""
    cause = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def key_id(key: str) -> str:
    """A run key as a tag value any search filter can quote (keys hold labels: any character)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class GuardedClient:
    """An MLflow client for one tracker (``client``, made on first use) whose :func:`guarded` methods never stop
    the work: the first failure warns once, naming ``name`` and saying what is left (``left_as``), and stops the
    tracker (``stopped``)."""

    def __init__(self, uri: str, name: str, left_as: str):
        self.uri, self.name, self.left_as, self.stopped = uri, name, left_as, False

    @functools.cached_property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def guarded(method):
    """A :class:`GuardedClient` method that, on its first failure, warns once and stops the tracker."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.stopped:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # the tracker's failure never stops the run
            self.stopped = True
            print(
                f"medpeft: warning: MLflow logging of {self.name} stopped ({first_line(err)}); {self.left_as}",
                file=sys.stderr,
            )
            return None

    return call


class MlflowRun(GuardedClient, RunListener):
    """One medpeft run as one MLflow run, a child of ``target.parent_run_id`` when set (then any earlier MLflow
    run of the same key under that parent, left by an interrupted attempt, is deleted first). Its client is made
    on first use, inside a guarded call (a worker without mlflow warns and goes on)."""

    def __init__(self, target: MlflowTarget):
        super().__init__(target.uri, "the run", "the run goes on; its files are complete")
        self.target = target
        self.run_id: str | None = None

    @guarded
    def started(self, spec: RunSpec) -> None:
        self.name = spec.key
        tags = {KEY_TAG: spec.key, KEY_ID_TAG: key_id(spec.key), "medpeft.version": __version__}
        if self.target.parent_run_id is not None:
            for stale in logged_runs(self.client, self.target, spec.key):
                self.client.delete_run(stale.info.run_id)
            tags["mlflow.parentRunId"] = self.target.parent_run_id
        run = self.client.create_run(self.target.experiment_id, tags=tags, run_name=spec.key)
        self.run_id = run.info.run_id
        self._log(params=run_params(spec))

    @guarded
    def epoch(self, row: dict[str, Any]) -> None:
        self._log(metrics={k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    @guarded
    def finished(self, record: RunRecord, run_dir: Path) -> None:
        self._log(
            params={"img_size": record.model.img_size},
            metrics=final_metrics(record),
            tags={
                **{f"medpeft.worker.{k}": v for k, v in record.worker.items()},
                **({} if record.selected is None else {SELECTED_TAG: str(record.selected).lower()}),
            },
        )
        for name in (*ARTIFACTS, submission_name(record.spec.task, record.spec.shots)):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        terminate(self.client, self.run_id, "FINISHED")

    @guarded
    def failed(self, error: BaseException) -> None:
        if self.run_id is not None:
            terminate(self.client, self.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def replay(self, record: RunRecord, run_dir: Path) -> str | None:
        """Log a run that finished untracked (or whose logging was cut short) from its record and directory;
        returns the MLflow run's id (None if logging failed)."""
        self.left_as = f"its files are complete in {run_dir}"
        self.started(record.spec)
        for row in record.result.history:
            self.epoch(row)
        self.finished(record, run_dir)
        return None if self.stopped else self.run_id

    @guarded
    def replay_if_missing(self, record: RunRecord, run_dir: Path) -> None:
        """:meth:`replay` unless the target's parent already holds a finished MLflow run of the record's key."""
        if not any(run.info.status == "FINISHED" for run in logged_runs(self.client, self.target, record.key)):
            self.replay(record, run_dir)

    def _log(
        self, *, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None, step: int = 0
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _number(v)],
            params=[Param(k, _text(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, _text(v)) for k, v in (tags or {}).items()],
        )


def terminate(client, run_id: str, status: str) -> None:
    """End an MLflow run (without the two lines MLflow prints for each: a bench has thousands)."""
    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(run_id, status)


def logged_runs(client, target: MlflowTarget, key: str | None = None) -> list:
    """The MLflow runs under ``target``'s parent (with ``key``: of that run key only)."""
    query = f"tags.mlflow.parentRunId = '{target.parent_run_id}'"
    if key is not None:
        query += f" and tags.`{KEY_ID_TAG}` = '{key_id(key)}'"
    runs, token = [], None
    while True:
        page = client.search_runs([target.experiment_id], query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def run_params(spec: RunSpec) -> dict[str, Any]:
    """What a run is, as MLflow params: the spec's fields and seed, the method's resolved options
    (``option.<name>``), the searched values (``candidate.<name>``) and the rest of the recipe (``train.<field>``);
    the image size comes at the end."""
    values = {k: v for k, v in spec.to_dict().items() if k not in ("options", "candidate", "train", "img_size")}
    values["seed"] = spec.seed
    values.update({f"option.{k}": v for k, v in get_method(spec.method, **spec.options).options().items()})
    values.update({f"candidate.{k}": v for k, v in spec.candidate.items()})
    values.update({f"train.{k}": v for k, v in dataclasses.asdict(spec.train).items() if k != "seed"})
    return values


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The test metrics (``test_<metric>``; calibrated: ``test_calibrated_<metric>``), the conformal sets' test
    coverage, mean size and singleton rate (``conformal_<name>``, with α, n_cal and a single q̂), the selection,
    size, time and memory of a finished run."""
    result = record.result
    values = {f"test_{k}": v for k, v in (record.test or {}).items()}
    calibration = result.calibration
    if calibration is not None:
        values.update({f"test_calibrated_{k}": v for k, v in (calibration.test or {}).items()})
        values.update(
            calibration_temperature=calibration.temperature,
            calibration_val_nll_before=calibration.val_nll_before,
            calibration_val_nll_after=calibration.val_nll_after,
        )
    conformal = result.conformal
    if conformal is not None:
        values.update(
            {f"conformal_{k}": (conformal.test or {}).get(k) for k in ("coverage", "mean_set_size", "singleton_rate")}
        )
        values.update(
            conformal_alpha=conformal.alpha,
            conformal_n_cal=conformal.n_cal,
            **(
                {"conformal_qhat": conformal.qhat}
                if isinstance(conformal.qhat, float) and math.isfinite(conformal.qhat)
                else {}
            ),
        )
    values.update(
        selected_epoch=result.selected_epoch,
        val_best=result.val_best,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        peak_memory_mb=result.peak_memory_mb,
        added_memory_mb=result.added_memory_mb,
        diverged_epoch=result.diverged_epoch,
        **{f"time_{k}_s": v for k, v in result.time_s.items()},
    )
    return values


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
