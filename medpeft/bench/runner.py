"""``run_bench``: every pending run of the grid through an executor, resumable, with a summary kept up to date."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..conformal import ConformalConfig
from ..errors import UserError
from ..experiment import check_spec, load_splits
from ..files import write_json
from ..posthoc import recompute_run
from ..record import RunRecord, RunSpec
from .config import TRACKING_KEYS, BenchConfig, grid_product
from .executors import Executor, LocalExecutor
from .selection import choose, group_cells
from .store import BenchStore, located, portable
from .summary import write_summary
from .tracking import BenchTracking, open_tracking, tracking_target
from .worker import RunJob

GRID_FILE = "grid.json"  #: the grid as a mapping, for --summarize


class _Grid:
    """The cells of a config: which runs each needs (the search's candidates in grid order, then those of a staged
    ``then`` search once the first stage has ended, then the refit), and which are due."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.candidates: dict[tuple, list[RunSpec]] = {}
        for spec in config.specs():
            self.candidates.setdefault(spec.cell, []).append(spec)
        self.keys = {s.key for specs in self.candidates.values() for s in specs}
        self.failed: set[str] = set()

    def order(self, record: RunRecord) -> int:
        """A candidate's position: the first stage in grid order, then the staged search's in its grid order."""
        keys = [s.key for s in self.candidates.get(record.spec.cell, [])]
        if record.key in keys:
            return keys.index(record.key)
        entry = self.config.entry(record.spec.label)
        then = list(entry.then) if entry else []
        values = tuple(record.spec.candidate.get(k) for k in then)
        grid = [tuple(c.values()) for c in grid_product(entry.then)] if then else []
        return len(keys) + (grid.index(values) if values in grid else len(grid))

    def complete(self, cell: tuple, records: list[RunRecord]) -> bool:
        """All of the cell's candidates of both stages ended (finished or failed), and its refit run too when the
        config refits."""
        if cell not in self.candidates:
            return True  # a cell of an earlier grid: what is there is all there will be
        if not self.candidates_ended(cell, records):
            return False
        refit = self.refit_spec(cell, records)
        return refit is None or refit.key in {r.key for r in records} | self.failed

    def candidates_ended(self, cell: tuple, records: list[RunRecord]) -> bool:
        """Every candidate of the cell, of both stages, finished (one of ``records``) or failed."""
        done = {r.key for r in records} | self.failed
        if not all(s.key in done for s in self.candidates.get(cell, [])):
            return False
        return all(s.key in done for s in self.follow_ups(cell, records))

    def follow_ups(self, cell: tuple, records: list[RunRecord]) -> list[RunSpec]:
        """The staged search's runs of a cell whose first stage has ended: its ``then`` values at the candidate
        chosen among the first stage's runs ([] before, without a ``then``, or when no candidate could be chosen)."""
        first = {s.key for s in self.candidates.get(cell, [])}
        entry = self.config.entry(cell[0])
        if not entry or not entry.then or not first <= {r.key for r in records} | self.failed:
            return []
        chosen = choose([r for r in records if r.key in first], self.order)
        if chosen is None:
            return []
        _, task, shots, exp, seed = cell
        return [
            self.config.spec(entry, c, task, shots, exp, seed) for c in entry.then_candidates(chosen.spec.candidate)
        ]

    def refit_spec(self, cell: tuple, records: list[RunRecord]) -> RunSpec | None:
        """The rerun of the cell's chosen candidate on train + val, when the config refits and a candidate won."""
        if not self.config.refit or cell not in self.candidates:
            return None
        chosen = choose([r for r in records if not r.spec.refit], self.order)
        if chosen is None:
            return None
        entry = self.config.entry(chosen.spec.label)
        _, task, shots, exp, seed = cell
        return self.config.spec(entry, chosen.spec.candidate, task, shots, exp, seed, refit=True)


def preflight(specs: list[RunSpec]) -> None:
    """Fail before any training: each backbone setup once, then every image each split names."""
    for spec in {(s.backbone, s.img_size, s.weights): s for s in specs}.values():
        check_spec(spec)
    for s in {(s.task, s.data_root, s.shots, s.exp, s.seed, s.test_list): s for s in specs}.values():
        load_splits(s).check_images()


def run_bench(
    config: BenchConfig,
    out: str | Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    decode_once: bool = True,
    feature_cache: bool = True,
    cache_dir: str | Path | None = None,
) -> list[RunRecord]:
    """Run every pending run of ``config`` into ``out`` and keep its summaries current; returns the indexed runs.

    A run whose directory already holds a finished run is skipped, so an interrupted bench loses nothing.
    ``decode_once``: evaluation images are decoded once per (file, size) into ``cache_dir`` (default
    ``out/.cache``; per node on a cluster: ``cache_dir/<host>``); ``feature_cache``: the frozen prefix's outputs
    for the evaluation lists are kept there too (:mod:`medpeft.evaluate`). A run that fails is reported and the
    others go on; the bench then ends with a one-line error. An executor that does not wait (SLURM without
    ``--wait``) returns once the runs are submitted; a rerun (or :func:`collect`) gathers them. With
    ``config.mlflow`` the bench is an MLflow parent run and its runs are children (:mod:`.tracking`); the store is
    checked before anything runs.
    """
    executor = executor or LocalExecutor()
    out = Path(out)
    grid = _Grid(config)
    target = tracking_target(config, out)
    with BenchStore(out) as store:
        store.check_setup(config.setup())
        finished = store.load()
        pending = [s for s in config.specs() if s.key not in finished]
        preflight(pending)
        store.write_setup(config.setup())
        write_json(out / GRID_FILE, portable(grid_dict(config), out))
        tracking = open_tracking(target, store)
        if tracking:
            tracking.set_status("RUNNING")
        cache = None if not decode_once else str(cache_dir or out / ".cache")
        executor.start(
            RunJob(
                str(out.resolve()),
                cache,
                feature_cache and cache is not None,
                node_cache=executor.node_cache,
                progress=progress and isinstance(executor, LocalExecutor),
                tracking=tracking and tracking.target,
            )
        )
        done = sum(
            1 for r in finished.values() if r.key in grid.keys or (r.spec.refit and r.spec.cell in grid.candidates)
        )
        bar = tqdm(
            total=done + len(pending), initial=done, desc="bench", disable=not progress or not executor.waits or None
        )
        try:
            for spec in pending:
                executor.submit(spec)
            submitted: set[str] = set()
            bar.total += _submit_due(grid, store, executor, submitted)
            executor.flush()
            _collect(grid, store, executor, submitted, bar, tracking)
        except BaseException as err:
            if tracking:
                tracking.set_status("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            bar.close()
            executor.close()
        _update(grid, store, tracking)
        if tracking:
            tracking.log_summaries(out)
            tracking.set_status("FAILED" if executor.waits and grid.failed else "FINISHED")
        if executor.waits and grid.failed:
            failures = store.failures()
            first = min(grid.failed)
            raise UserError(
                f"{len(grid.failed)} run(s) failed, e.g. {first}: {failures.get(first, '?')} "
                f"(all in {out / 'failed.jsonl'}); the others are kept"
            )
        return store.indexed()


def collect(out: str | Path, *, rewrite: bool = False) -> tuple[list[RunRecord], int]:
    """Gather the finished run directories of the bench in ``out`` into ``runs.jsonl`` and its summaries, running
    nothing (``medpeft bench --summarize``); returns the indexed runs and how many runs of the grid are missing.
    ``rewrite``: write ``runs.jsonl`` whole (its runs' records changed in place)."""
    out = Path(out)
    path = out / GRID_FILE
    if not path.is_file():
        raise UserError(f"{out} holds no bench ({GRID_FILE} is missing): run medpeft bench --out {out} first")
    grid = _Grid(BenchConfig.from_dict(located(json.loads(path.read_text()), out), str(path)))
    target = tracking_target(grid.config, out)
    with BenchStore(out) as store:
        finished = store.load()
        if rewrite:
            store.rewrite_index()
        grid.failed = set(store.failures()) - set(finished)
        tracking = open_tracking(target, store)
        _update(grid, store, tracking)
        if tracking:
            tracking.log_summaries(out)
        missing = [key for key in grid.keys if key not in finished]
        missing += [spec.key for spec in _due(grid, store) if spec.key not in finished]
        return store.indexed(), len(missing)


def recompute(
    out: str | Path, *, calibrate: str | None = None, conformal: ConformalConfig | str | None = None
) -> tuple[list[RunRecord], list[str]]:
    """Recompute the post-hoc results of every finished run of the bench in ``out`` from its kept logits
    (:func:`medpeft.posthoc.recompute_run`; the same arguments), then ``runs.jsonl`` and the summaries; returns the
    indexed runs and the run directories skipped for want of ``logits.npz`` (runs from before it was kept)."""
    out = Path(out)
    if not (out / GRID_FILE).is_file():
        raise UserError(f"{out} holds no bench ({GRID_FILE} is missing): pass a bench folder or a run directory")
    skipped = []
    with BenchStore(out) as store:
        for record in store.load().values():
            if recompute_run(store.run_dir(record), calibrate=calibrate, conformal=conformal) is None:
                skipped.append(record.spec.run_dir)
    runs, _ = collect(out, rewrite=True)
    return runs, skipped


def grid_dict(config: BenchConfig) -> dict:
    """``config`` as the mapping :meth:`BenchConfig.from_dict` reads (``OUT/grid.json``, for ``--summarize``)."""
    methods = [
        {
            "method": e.method,
            "options": e.options,
            "label": e.label,
            "search": e.search,
            **({"then": e.then} if e.then else {}),
        }
        for e in config.methods
    ]
    tracking = {k: getattr(config, k) for k in TRACKING_KEYS if getattr(config, k) is not None}
    return {
        "methods": methods,
        "tasks": config.tasks,
        "shots": config.shots,
        "exps": config.exps,
        "seeds": config.seeds,
        "refit": config.refit,
        **config.portable_shared(),
        **tracking,
    }


def _collect(
    grid: _Grid,
    store: BenchStore,
    executor: Executor,
    submitted: set[str],
    bar: tqdm,
    tracking: BenchTracking | None = None,
) -> None:
    while executor.waits and executor.pending():
        outcome = executor.next()
        bar.update(1)
        bar.set_postfix_str(outcome.spec.key)
        if outcome.record is not None:
            store.add(outcome.record)
        else:
            grid.failed.add(outcome.spec.key)
            store.fail(outcome.spec.key, outcome.error)
            bar.write(f"failed: {outcome.spec.key}: {outcome.error}")
        bar.total += _submit_due(grid, store, executor, submitted)
        executor.flush()
        _update(grid, store, tracking)


def _submit_due(grid: _Grid, store: BenchStore, executor: Executor, submitted: set[str]) -> int:
    """Submit the runs that became due (a staged search's or a refit, once what they depend on has ended); returns
    how many."""
    due = [
        s
        for s in _due(grid, store)
        if s.key not in store.records and s.key not in grid.failed and s.key not in submitted
    ]
    for spec in due:
        executor.submit(spec)
        submitted.add(spec.key)
    return len(due)


def _due(grid: _Grid, store: BenchStore) -> list[RunSpec]:
    """The runs that depend on others: each cell's staged-search runs once its first stage has ended, and its refit
    run once every candidate has."""
    due = []
    for cell, records in group_cells(store.records.values()).items():
        if cell not in grid.candidates:
            continue
        due += grid.follow_ups(cell, records)
        if grid.candidates_ended(cell, records):
            refit = grid.refit_spec(cell, records)
            due += [refit] if refit is not None else []
    return due


def _update(grid: _Grid, store: BenchStore, tracking: BenchTracking | None = None) -> None:
    store.update_index(grid.complete, grid.order, refit=grid.config.refit)
    write_summary(store.out, store.indexed())
    if tracking:
        tracking.update(store.indexed())
