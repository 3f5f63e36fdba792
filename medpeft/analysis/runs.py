"""Which runs the analysis reads: those of bench directories (the selected ones, or every candidate) and run
directories named directly."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Notice, UserError
from ..record import RUN_FILE, WEIGHTS_FILE, RunRecord, read_record

_EXPECTED = "a bench directory (with runs.jsonl) or a run directory (with run.json)"


class WithoutWeights(Notice):
    """Runs of a bench left out of the analysis because only their records exist, said in one line."""


@dataclass
class RunRef:
    """One finished run to analyse: its record and directory; ``name`` is its key (made unique)."""

    name: str
    record: RunRecord
    run_dir: Path

    @property
    def label(self) -> str:
        return self.record.spec.label


def collect_runs(paths: str | Path | Iterable[str | Path], *, candidates: bool = False) -> list[RunRef]:
    """The runs of every path: a bench directory gives the runs its tables count (every search candidate too with
    ``candidates``), a run directory itself. A run found twice is kept once, under its bench key."""
    from ..bench import read_index

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError(f"no path given: expected {_EXPECTED}")
    refs: dict[Path, RunRef] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such directory; expected {_EXPECTED}")
        if not path.is_dir():
            raise UserError(f"{path} is a file; expected {_EXPECTED}")
        if (path / "runs.jsonl").is_file():
            records = [r for r in read_index(path) if candidates or r.selected]
            if not records:
                raise UserError(f"{path}/runs.jsonl lists no finished run")
            trained = [r for r in records if (path / r.spec.run_dir / WEIGHTS_FILE).is_file()]
            if not trained:
                raise UserError(
                    f"{path}: none of its {len(records)} runs has trained weights ({WEIGHTS_FILE}; runs "
                    "restored from runs.jsonl keep only their records): rerun them to analyse them"
                )
            if len(trained) < len(records):
                warnings.warn(
                    f"{path}: {len(records) - len(trained)} of its {len(records)} runs have no trained "
                    f"weights (restored from runs.jsonl) and are left out of the analysis",
                    WithoutWeights,
                    stacklevel=2,
                )
            for record in trained:
                run_dir = (path / record.spec.run_dir).resolve()
                refs[run_dir] = RunRef(record.key, record, run_dir)
        elif (path / RUN_FILE).is_file():
            run_dir = path.resolve()
            refs.setdefault(run_dir, RunRef(read_record(run_dir).key, read_record(run_dir), run_dir))
        else:
            raise UserError(f"{path} has neither runs.jsonl nor {RUN_FILE}; expected {_EXPECTED}")
    seen: dict[str, int] = {}
    for ref in refs.values():  # two run directories with the same spec: keep both, told apart
        seen[ref.name] = seen.get(ref.name, 0) + 1
        if seen[ref.name] > 1:
            ref.name = f"{ref.name}#{seen[ref.name]}"
    return list(refs.values())
