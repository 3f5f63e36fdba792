"""MedFMC annotation lists: one image per line, ``<file name> <labels>``, no header.

Label formats, by task:

- single-label (colon): ``<name> <class index>``, e.g. ``... 12_07_06-lv1-...p0008.png 0``. Names may contain
  spaces: the label is what follows the *last* space.
- chest: ``<name> <C comma-separated 0/1>``.
- every other multi-label task (endo): ``<name> <C space-separated 0/1>``.

Labels come back as an ``int`` (single-label) or a ``uint8`` array of length C (multi-label).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import UserError
from .tasks import TaskSpec, get_task

_COMMA_SEPARATED = {"chest"}
_LABEL_TOKEN = re.compile(r"[0-9,]+")


class _Malformed(ValueError):
    """A line that does not parse; the message says what was expected."""


def _expected(task: TaskSpec) -> str:
    if not task.multilabel:
        return f"'<name> <class index 0..{task.num_classes - 1}>'"
    sep = "comma" if task.name in _COMMA_SEPARATED else "space"
    return f"'<name> <{task.num_classes} {sep}-separated 0/1 labels>'"


def _parse(line: str, task: TaskSpec):
    comma = task.multilabel and task.name in _COMMA_SEPARATED
    parts = line.rsplit(None, 1 if comma or not task.multilabel else task.num_classes)
    name_tail = parts[0].rsplit(None, 1)[-1] if len(parts[0].split()) > 1 else ""
    if len(parts) < 2 or _LABEL_TOKEN.fullmatch(name_tail):  # no labels, or too many
        raise _Malformed(_expected(task))
    if not task.multilabel:
        if not parts[1].isdigit() or int(parts[1]) >= task.num_classes:
            raise _Malformed(_expected(task))
        return parts[0], int(parts[1])
    values = parts[1].split(",") if comma else parts[1:]
    if len(values) != task.num_classes or any(v not in ("0", "1") for v in values):
        raise _Malformed(_expected(task))
    return parts[0], np.array(values, dtype=np.uint8)


def _format(label, task: TaskSpec) -> str:
    if not task.multilabel:
        return str(int(label))
    values = np.asarray(label).reshape(-1)
    if values.size != task.num_classes or not np.isin(values, (0, 1)).all():
        raise ValueError(f"{task.name} label must be {task.num_classes} values of 0/1, got {label!r}")
    return ("," if task.name in _COMMA_SEPARATED else " ").join(str(int(v)) for v in values)


def _lines(path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank line; CRLF is tolerated."""
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, s) for n, line in enumerate(f, 1) if (s := line.strip())]
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read annotation file {path}: {e}") from e


def read_annotations(path: str | Path, task: str | TaskSpec) -> list[tuple[str, object]]:
    """``[(name, label), ...]`` in file order; duplicate lines are kept, blank lines skipped."""
    return _parse_lines(path, _lines(path), get_task(task))


def _parse_lines(path, lines, task: TaskSpec) -> list[tuple[str, object]]:
    items = []
    for n, line in lines:
        try:
            items.append(_parse(line, task))
        except _Malformed as e:
            snippet = line if len(line) <= 80 else line[:77] + "..."
            raise UserError(f"{path}, line {n}: expected {e} ({task.name}), got {snippet!r}") from None
    return items


def read_names(path: str | Path, task: str | TaskSpec | None = None) -> list[str]:
    """File names, one per line (e.g. ``test_WithoutLabel.txt``; names may contain spaces).

    With ``task``, a line that parses as an annotation of that task yields just its name, so a labelled list works too.
    """
    task = None if task is None else get_task(task)
    names = []
    for _, line in _lines(path):
        try:
            names.append(_parse(line, task)[0] if task else line)
        except _Malformed:
            names.append(line)
    return names


def read_list(path: str | Path, task: str | TaskSpec) -> tuple[list[str], list | None]:
    """``(names, labels)`` of a labelled or a names-only list; ``labels`` is None for a names-only list.

    The first line decides: it is labelled when its last field looks like labels (digits and commas); every line of a
    labelled list must then parse.
    """
    lines = _lines(path)
    if lines and _LABEL_TOKEN.fullmatch(lines[0][1].rsplit(None, 1)[-1]):
        items = _parse_lines(path, lines, get_task(task))
        return [name for name, _ in items], [label for _, label in items]
    return [line for _, line in lines], None


def write_annotations(path: str | Path, items: Iterable[tuple[str, object]], task: str | TaskSpec) -> None:
    """Write ``[(name, label), ...]`` in the official format (LF line endings, no header)."""
    task = get_task(task)
    text = "".join(f"{name} {_format(label, task)}\n" for name, label in items)
    Path(path).write_text(text, encoding="utf-8", newline="\n")
