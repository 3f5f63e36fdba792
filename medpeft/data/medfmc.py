"""MedFMC (ChestDR, ColonPath, Endo) in its official layout.

::

    <root>/<task>/images/<name>
    <root>/<task>/<task>_<K>-shot_train_exp<N>.txt   (and _val_)
    <root>/<task>/train_<P>.txt, val_<P>.txt          (P% of the training set, e.g. train_20.txt: one sampling)
    <root>/<task>/test_WithLabel.txt                  (default test list)

Note: the official chest/endo val files overlap their train files; use them for checkpoint selection only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import ParameterError, UserError
from .annotations import read_annotations, read_list, write_annotations
from .samples import DatasetSplits, Samples, stack_labels
from .shots import parse_shots
from .splits import medfmc_few_shot
from .tasks import TaskSpec, get_task

_SPLIT_FILE = re.compile(r"(?P<task>.+)_(?P<shots>\d+)-shot_train_exp(?P<exp>\d+)\.txt")


def split_path(root: str | Path, task: str, shots: int | str, exp: int, part: str) -> Path:
    """``<root>/<task>/<task>_<shots>-shot_<part>_exp<exp>.txt`` (``part``: train or val); for a percentage
    ``"P%"`` the official ``<root>/<task>/<part>_<P>.txt`` (a single sampling: ``exp`` must be 1)."""
    if isinstance(parse_shots(shots), float):
        if exp != 1:
            raise UserError(
                f"MedFMC's {shots} split is one sampling ({part}_{str(shots).rstrip('%')}.txt): use exp 1, "
                "and seeds for repeats"
            )
        return Path(root) / task / f"{part}_{str(shots).strip().rstrip('%')}.txt"
    return Path(root) / task / f"{task}_{shots}-shot_{part}_exp{exp}.txt"


def available_splits(folder: str | Path, task: str) -> list[tuple[int, int]]:
    """Sorted ``(K, N)`` of the ``<task>_<K>-shot_train_exp<N>.txt`` files in ``folder``."""
    found = (_SPLIT_FILE.fullmatch(p.name) for p in Path(folder).glob(f"{task}_*-shot_train_exp*.txt"))
    return sorted((int(m["shots"]), int(m["exp"])) for m in found if m and m["task"] == task)


def _samples(names, labels, images: Path, task: TaskSpec) -> Samples:
    labels = None if labels is None else stack_labels(labels, task)
    return Samples(list(names), [str(images / n) for n in names], labels)


def _split(root, task: TaskSpec, shots: int, exp: int, part: str) -> list:
    path = split_path(root, task.name, shots, exp, part)
    if not path.is_file():
        combos = ", ".join(f"{k}-shot exp{n}" for k, n in available_splits(path.parent, task.name)) or "none"
        raise UserError(
            f"split file {path} not found; available in {path.parent}: {combos} "
            "(write more with medpeft.data.write_medfmc_splits)"
        )
    items = read_annotations(path, task)
    if not items:
        raise UserError(f"split file {path} lists no images")
    return items


def load_medfmc(
    root: str | Path, task: str | TaskSpec, shots: int, exp: int, test_list: str | Path | None = None
) -> DatasetSplits:
    """The K-shot experiment-N splits of a MedFMC task.

    ``test_list``: a labelled or names-only list (then ``test.labels`` is None), absolute or relative to
    ``<root>/<task>/``; default ``test_WithLabel.txt``. Images are not opened here: see
    :meth:`DatasetSplits.check_images`.
    """
    task = get_task(task)
    folder = Path(root) / task.name
    if not folder.is_dir():
        raise UserError(f"MedFMC task folder {folder} not found; expected <root>/{task.name}/ with images/ and lists")
    images = folder / "images"
    train, val = (_split(root, task, shots, exp, part) for part in ("train", "val"))
    test_path = folder / (test_list or "test_WithLabel.txt")  # an absolute test_list replaces the folder
    names, labels = read_list(test_path, task)
    return DatasetSplits(
        task,
        _samples([n for n, _ in train], [y for _, y in train], images, task),
        _samples([n for n, _ in val], [y for _, y in val], images, task),
        _samples(names, labels, images, task),
    )


def write_medfmc_splits(
    root: str | Path,
    task: str | TaskSpec,
    shots_list: Iterable[int | str],
    exps: Iterable[int],
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``<task>_<K>-shot_{train,val}_exp<N>.txt`` from ``<root>/<task>/trainval.txt`` for every K and N.

    The split for (K, N) is seeded with ``(seed, K, N)``. Existing files are kept (UserError) unless ``overwrite``.
    Returns the paths written.
    """
    task = get_task(task)
    items = read_annotations(Path(root) / task.name / "trainval.txt", task)
    jobs = [(k, n) for k in shots_list for n in exps]
    paths = [split_path(root, task.name, k, n, part) for k, n in jobs for part in ("train", "val")]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise ParameterError(
            "overwrite",
            "split file {path} already exists ({n} in all); pass {overwrite=True} to replace them",
            path=existing[0],
            n=len(existing),
        )
    for k, n in jobs:
        train, val = medfmc_few_shot(items, task, k, (seed, k, n))
        write_annotations(split_path(root, task.name, k, n, "train"), train, task)
        write_annotations(split_path(root, task.name, k, n, "val"), val, task)
    return paths
