"""``run_bench``: every pending run of the grid through an executor, resumable, with a summary kept up to date."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..experiment import check_spec, load_splits
from ..record import RunRecord, RunSpec
from .config import BenchConfig
from .executors import Executor, LocalExecutor
from .store import BenchStore
from .summary import write_summary
from .worker import RunJob


class _Grid:
    """The cells of a config: which runs each needs (candidates in grid order, then the refit), and which are due."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.candidates: dict[tuple, list[RunSpec]] = {}
        for spec in config.specs():
            self.candidates.setdefault(spec.cell, []).append(spec)
        self.failed: set[str] = set()

    def order(self, record: RunRecord) -> int:
        keys = [s.key for s in self.candidates.get(record.spec.cell, [])]
        return keys.index(record.key) if record.key in keys else len(keys)

    def complete(self, cell: tuple, records: list[RunRecord]) -> bool:
        """All of the cell's candidates ended (finished or failed), and its refit run too when the config refits."""
        if cell not in self.candidates:
            return True  # a cell of an earlier grid: what is there is all there will be
        done = {r.key for r in records} | self.failed
        if not all(s.key in done for s in self.candidates[cell]):
            return False
        refit = self.refit_spec(cell, records)
        return refit is None or refit.key in done

    def refit_spec(self, cell: tuple, records: list[RunRecord]) -> RunSpec | None:
        """The rerun of the cell's chosen candidate on train + val, when the config refits and a candidate won."""
        from .selection import choose

        if not self.config.refit or cell not in self.candidates:
            return None
        chosen = choose([r for r in records if not r.spec.refit], self.order)
        if chosen is None:
            return None
        entry = self.config.entry(chosen.spec.label)
        label, task, shots, exp, seed = cell
        return self.config.spec(entry, chosen.spec.candidate, task, shots, exp, seed, refit=True)


def preflight(specs: list[RunSpec]) -> None:
    """Fail before any training: each backbone setup once, then every image each split names."""
    for spec in {(s.backbone, s.img_size, s.weights): s for s in specs}.values():
        check_spec(spec)
    for s in {(s.task, s.data_root, s.shots, s.exp, s.seed, s.test_list): s for s in specs}.values():
        load_splits(s).check_images()


def run_bench(config: BenchConfig, out: str | Path, *, executor: Executor | None = None, progress: bool = True,
              decode_once: bool = True, feature_cache: bool = True,
              cache_dir: str | Path | None = None) -> list[RunRecord]:
    """Run every pending run of ``config`` into ``out`` and keep its summaries current; returns the indexed runs.

    A run whose directory already holds a finished run is skipped, so an interrupted bench loses nothing.
    ``decode_once``: evaluation images are decoded once per (file, size) into ``cache_dir`` (default
    ``out/.cache``); ``feature_cache``: the frozen prefix's outputs for the evaluation lists are kept there too
    (:mod:`medpeft.evaluate`). A run that fails is reported and the others go on; the bench then ends with a
    one-line error.
    """
    executor = executor or LocalExecutor()
    out = Path(out)
    grid = _Grid(config)
    with BenchStore(out) as store:
        store.check_setup(config.setup())
        finished = store.load()
        pending = [s for s in config.specs() if s.key not in finished]
        preflight(pending)
        store.write_setup(config.setup())
        cache = None if not decode_once else str(cache_dir or out / ".cache")
        executor.start(RunJob(str(out.resolve()), cache, feature_cache and cache is not None,
                              progress=progress and isinstance(executor, LocalExecutor)))
        try:
            for spec in pending:
                executor.submit(spec)
            refits: set[str] = set()
            _submit_refits(grid, store, executor, refits)
            _collect(grid, store, executor, refits, progress)
        finally:
            executor.close()
        _update(grid, store)
        if executor.waits and grid.failed:
            failures = store.failures()
            first = sorted(grid.failed)[0]
            raise UserError(f"{len(grid.failed)} run(s) failed, e.g. {first}: {failures.get(first, '?')} "
                            f"(all in {out / 'failed.jsonl'}); the others are kept")
        return store.indexed()


def _collect(grid: _Grid, store: BenchStore, executor: Executor, refits: set[str], progress: bool) -> None:
    bar = tqdm(total=executor.pending(), desc="bench", disable=not progress or not executor.waits or None)
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
        bar.total += _submit_refits(grid, store, executor, refits)
        _update(grid, store)
    bar.close()


def _submit_refits(grid: _Grid, store: BenchStore, executor: Executor, submitted: set[str]) -> int:
    """Submit the refit runs that became due (a cell's candidates all ended); returns how many."""
    count = 0
    cells: dict[tuple, list[RunRecord]] = {}
    for record in store.records.values():
        cells.setdefault(record.spec.cell, []).append(record)
    for cell, records in cells.items():
        candidates = grid.candidates.get(cell, [])
        done = {r.key for r in records} | grid.failed
        if not candidates or not all(s.key in done for s in candidates):
            continue
        refit = grid.refit_spec(cell, records)
        if refit is not None and refit.key not in done and refit.key not in submitted:
            executor.submit(refit)
            submitted.add(refit.key)
            count += 1
    return count


def _update(grid: _Grid, store: BenchStore) -> None:
    store.update_index(grid.complete, grid.order, refit=grid.config.refit)
    write_summary(store.out, store.indexed())
