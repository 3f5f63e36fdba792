"""A bench folder: finished run directories (the truth), the ``runs.jsonl`` index, the shared setup and a lock.

::

    OUT/bench.json               the settings every run shares (paths relative to OUT); a rerun with others is refused
    OUT/grid.json                the grid itself (paths relative to OUT), for ``medpeft bench --summarize OUT``
    OUT/runs/<label>/<cell>/...  one run directory per finished run (run.json written last, moved in whole)
    OUT/runs.jsonl               one line per finished run of a complete cell: its record and "selected"
    OUT/failed.jsonl             one line per failed run attempt (key and error)
    OUT/.lock                    held by the one bench process that writes OUT
    OUT/.cache/[<host>/]         decoded images and frozen features (one folder per host on a cluster)
    OUT/slurm/                   submitit's job files, and jobs.jsonl: the jobs submitted and their runs

Run directories are written by whoever runs them (this process, a Ray worker, a SLURM job), each atomically,
so concurrent writers never collide. ``runs.jsonl`` has a single writer, the bench holding the lock: it appends a
cell's lines once the cell is complete (its selection is then final) and rewrites the file atomically when a
finished cell changes (a grid grew and another candidate won). A ``runs.jsonl`` whose run directories are absent (a
repository commits the index, not the runs) gets their ``run.json`` back from its lines, without the trained
weights, so a fresh clone resumes instead of redoing them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

from ..errors import Notice, ParameterError, UserError
from ..files import append_line, dumps, json_line, read_json_lines, write_json, write_text
from ..record import RUN_FILE, RunRecord, RunSpec, read_record
from .selection import group_cells, selection


class BenchStore:
    """The bench folder ``out``. Use as a context manager to hold its lock while writing."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.records: dict[str, RunRecord] = {}
        self._written: dict[str, bool] = {}
        self._rebuild = False
        self._lock = None

    def __enter__(self) -> BenchStore:
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ParameterError(
                "out",
                "{path} is in use by another medpeft bench ({holder}): wait for it to finish, or use another {out}",
                path=self.out,
                holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def check_setup(self, setup: dict) -> None:
        """Refuse when ``bench.json`` holds other shared settings than ``setup`` (paths compared relative to OUT)."""
        path = self.out / "bench.json"
        if path.is_file():
            current, previous = (
                portable(json.loads(dumps(setup)), self.out),
                portable(json.loads(path.read_text()), self.out),
            )
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            if changed:
                raise ParameterError(
                    "out",
                    "{path} holds runs made with other settings ({changed}): use a new {out}",
                    path=self.out,
                    changed=", ".join(changed),
                )

    def write_setup(self, setup: dict) -> None:
        """Record the shared settings in ``bench.json`` (once the grid has passed its checks)."""
        if not (self.out / "bench.json").is_file():
            write_json(self.out / "bench.json", portable(setup, self.out))

    def run_dir(self, record_or_spec: RunRecord | RunSpec) -> Path:
        spec = getattr(record_or_spec, "spec", record_or_spec)
        return self.out / spec.run_dir

    def load(self) -> dict[str, RunRecord]:
        """Every finished run under ``OUT/runs`` (each directory's ``run.json``), by key, in ``runs.jsonl`` order
        (then by directory).

        The run directories are the truth: a run directory whose ``run.json`` is not a run record (truncated, hand
        edited) is set aside as a hidden sibling, with a one-line notice, so that its run is redone; a
        ``runs.jsonl`` with a damaged line is rebuilt from the run directories at the next update.
        """
        damaged: list[int] = []
        index = self.out / "runs.jsonl"
        lines = [line for line in read_json_lines(index, damaged=damaged) if isinstance(line, dict) and "key" in line]
        self._written = {line["key"]: line.get("selected") for line in lines}
        if damaged:
            self._rebuild = True
            warnings.warn(
                f"{index}, line {damaged[0]}: damaged ({len(damaged)} line(s)); rebuilt from the run directories",
                DamagedStore,
                stacklevel=2,
            )
        position = {key: i for i, key in enumerate(self._written)}
        self._restore(lines)
        found = []
        for path in sorted((self.out / "runs").glob(f"**/{RUN_FILE}")):
            if any(part.startswith(".") for part in path.relative_to(self.out).parts):
                continue  # a run still being written elsewhere, or left by a killed one
            try:
                found.append(read_record(path.parent))
            except UserError as err:
                aside = _set_aside(path.parent)
                warnings.warn(
                    f"{err}; set aside as {aside.relative_to(self.out)}, the run will be redone",
                    DamagedStore,
                    stacklevel=2,
                )
        for record in sorted(found, key=lambda r: position.get(r.key, len(position))):
            self.records[record.key] = record
        return self.records

    def _restore(self, lines: list[dict]) -> None:
        """Write back the ``run.json`` of indexed runs whose run directory is absent (a fresh clone of a repository
        that commits ``runs.jsonl`` but not the run directories), so that they count as finished and are not redone.
        Their trained weights are not restored: the analysis and ``predict`` leave such runs out."""
        restored = 0
        for line in lines:
            run_dir = self.out / str(line.get("run_dir", ""))
            if "run_dir" not in line or run_dir.exists() or not run_dir.resolve().is_relative_to(self.out.resolve()):
                continue
            try:
                record = RunRecord.from_dict({k: v for k, v in line.items() if k != "run_dir"})
            except (KeyError, TypeError, ValueError, UserError):
                continue  # not a record: left to the rebuild from the run directories
            if record.spec.run_dir != line["run_dir"]:
                continue
            run_dir.mkdir(parents=True)
            write_json(run_dir / RUN_FILE, {**record.to_dict(), "selected": None})
            restored += 1
        if restored:
            warnings.warn(
                f"{self.out / 'runs.jsonl'}: {restored} finished run(s) had no run directory; their records "
                "were restored from it (without trained weights), so they are not redone",
                RestoredRuns,
                stacklevel=3,
            )

    def rewrite_index(self) -> None:
        """Have the next :meth:`update_index` write ``runs.jsonl`` whole (its records changed in place)."""
        self._rebuild = True

    def add(self, record: RunRecord) -> None:
        self.records[record.key] = record

    def fail(self, key: str, error: str) -> None:
        append_line(self.out / "failed.jsonl", json_line({"key": key, "error": error}))

    def failures(self) -> dict[str, str]:
        return {line["key"]: line["error"] for line in read_json_lines(self.out / "failed.jsonl")}

    def update_index(
        self,
        complete: Callable[[tuple, list[RunRecord]], bool],
        order: Callable[[RunRecord], int] | None = None,
        *,
        refit: bool = False,
    ) -> None:
        """Bring ``runs.jsonl`` up to date: every record of every complete cell, with its selection."""
        lines: dict[str, RunRecord] = {}
        for cell, records in group_cells(self.records.values()).items():
            if complete(cell, records):
                for key, selected in selection(records, order, refit=refit).items():
                    self.records[key].selected = selected
                    lines[key] = self.records[key]
        stale = any(key not in lines or lines[key].selected != selected for key, selected in self._written.items())
        if stale or self._rebuild:
            write_text(self.out / "runs.jsonl", "".join(self._line(r) for r in lines.values()))
        else:
            for key, record in lines.items():
                if key not in self._written:
                    append_line(self.out / "runs.jsonl", self._line(record))
        self._written = {key: record.selected for key, record in lines.items()}
        self._rebuild = False

    def _line(self, record: RunRecord) -> str:
        return json_line({**record.to_dict(), "run_dir": record.spec.run_dir})

    def indexed(self) -> list[RunRecord]:
        """The records ``runs.jsonl`` holds (after :meth:`update_index`)."""
        return [self.records[key] for key in self._written if key in self.records]


#: Settings that name files: ``bench.json`` and ``grid.json`` hold them relative to the bench folder, so that a bench
#: committed with its weights and data beside it resumes from a clone anywhere.
PATH_KEYS = ("data_root", "weights")


def portable(settings: dict, out: Path) -> dict:
    """``settings`` with its absolute :data:`PATH_KEYS` made relative to the bench folder ``out``."""
    base = Path(out).resolve()
    return {
        k: os.path.relpath(v, base) if k in PATH_KEYS and isinstance(v, str) and os.path.isabs(v) else v
        for k, v in settings.items()
    }


def located(settings: dict, out: Path) -> dict:
    """The inverse of :func:`portable`: relative :data:`PATH_KEYS` made absolute from the bench folder ``out``."""
    base = Path(out).resolve()
    return {
        k: os.path.normpath(base / v) if k in PATH_KEYS and isinstance(v, str) and not os.path.isabs(v) else v
        for k, v in settings.items()
    }


class DamagedStore(Notice):
    """A damaged file in a bench folder: set aside or rebuilt, and said in one line."""


class RestoredRuns(Notice):
    """Runs of a bench's ``runs.jsonl`` restored to run directories of their own, said in one line."""


def _set_aside(run_dir: Path) -> Path:
    """Move a damaged run directory to a hidden sibling ``.<name>.damaged-N`` (kept for inspection)."""
    n = 1
    while (aside := run_dir.with_name(f".{run_dir.name}.damaged-{n}")).exists():
        n += 1
    os.replace(run_dir, aside)
    return aside


def read_index(out: str | Path) -> list[RunRecord]:
    """The records of a bench's ``runs.jsonl`` (with their ``selected``), e.g. for the analysis."""
    path = Path(out) / "runs.jsonl"
    records = []
    for line in read_json_lines(path):
        line.pop("run_dir", None)
        records.append(RunRecord.from_dict(line))
    return records
