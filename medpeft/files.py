"""Writing results so that nothing is ever half-written: atomic files, atomic JSON lines, staged directories."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


def write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON (:func:`strict_json`) atomically (temporary file, then rename): a reader never sees half a
    file."""
    write_text(path, dumps(obj, indent=2) + "\n")


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON: a number that is not finite (NaN, ±inf) is written as ``null``, as JSON has no such values
    (``jq`` and browsers refuse Python's ``NaN``); NumPy scalars and arrays as plain numbers and lists."""
    return json.dumps(strict_json(obj), allow_nan=False, default=_json_default, **kwargs)


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python or NumPy) replaced by None, recursively."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    return obj


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (temporary file in the same folder, then rename)."""
    write_bytes(path, text.encode())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for people to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def json_line(obj: Any) -> str:
    """One line of strict JSON (:func:`dumps`), keys sorted."""
    return dumps(obj, sort_keys=True) + "\n"


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single ``write`` on an append-only descriptor, then flush it to disk.

    A line a crash cut short (no final newline) is ended first, so it stays one unreadable line of its own.
    """
    data = line.encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_lines(path: str | Path, *, damaged: list[int] | None = None) -> list[Any]:
    """Every readable JSON line of ``path`` (a line cut short by a crash is skipped, its number appended to
    ``damaged``); [] when it does not exist. Files written before strict JSON, with ``NaN``, read too."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError:
            if damaged is not None:
                damaged.append(number)
    return out


def check_writable_dir(path: str | Path, what: str = "--out", *, shown: str | Path | None = None) -> Path:
    """``path`` as a directory that can be created and written, else a one-line error naming ``what`` and
    ``shown`` (default ``path``), e.g. the run directory that was to go inside it."""
    path = Path(path).expanduser()
    name = f"{what} {shown or path}"
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise UserError(f"{name}: {parent} is not a directory; choose another path")
    if not _writable(parent):
        raise UserError(f"{name}: no permission to write in {parent}; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{name}: cannot write in {path} ({err.strerror or err}); choose another path") from None
    return path


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def staged_dir(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a directory in a hidden sibling and move it to ``final`` only when the block succeeds.

    ``final`` either does not exist or is complete: an interrupted block leaves nothing (its staging folder is
    removed). With ``replace`` an existing ``final`` is swapped out at the very end and deleted; without it, an
    existing ``final`` is an error.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        yield stage
        if final.exists():
            if not replace:
                raise UserError(f"{final} appeared while the run was being written; it was left as it is")
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, old / final.name)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
