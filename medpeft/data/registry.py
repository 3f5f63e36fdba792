"""Every dataset medpeft reads, by name, behind one loader signature."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError, UserError
from . import br35h
from .annotations import read_names
from .generic import load_csv, load_folder
from .isic import load_isic
from .medfmc import load_medfmc
from .medmnist import load_medmnist
from .samples import DatasetSplits, Samples
from .seg import load_isic2018, load_kvasir, load_seg_csv, load_seg_folder, load_seg_volumes
from .tasks import MEDFMC_TASKS


@dataclass(frozen=True)
class Dataset:
    """A dataset kind: ``load(root, shots, exp, seed, test_list)`` gives its K-shot splits of experiment ``exp``;
    ``image_list(root, list_file)`` the images of a list file (names only or labelled) for prediction;
    ``default_root()``, for a dataset that ships in a package, where it is (``--data-root`` may then be left out)."""

    name: str
    load: Callable[[str, int, int, int, str | None], DatasetSplits]
    image_list: Callable[[str, str], Samples]
    default_root: Callable[[], Path] | None = None
    sliced: bool = False  #: whether ``load`` takes ``axis`` (volumes sliced along a voxel axis)

    def root(self, given: str | None) -> str:
        """``given``, or the default root; UserError when neither exists."""
        if given is not None:
            return given
        if self.default_root is None:
            raise ParameterError("data_root", "task {task!r} needs {data_root}", task=self.name)
        return str(self.default_root())


def _medfmc(task: str) -> Dataset:
    def load(root, shots, exp, seed, test_list):
        return load_medfmc(root, task, shots, exp, test_list=test_list)

    def image_list(root, list_file):
        names = read_names(list_file, task)
        return Samples(names, [str(Path(root) / task / "images" / n) for n in names])

    return Dataset(task, load, image_list)


def _beside_list(root, list_file) -> Samples:
    """Names as written; a relative name is a path from the list file's folder."""
    names = read_names(list_file)
    return Samples(names, [n if Path(n).is_absolute() else str(Path(list_file).parent / n) for n in names])


def _own_test(name: str, loader: Callable) -> Dataset:
    def load(root, shots, exp, seed, test_list):
        if test_list is not None:
            raise ParameterError(
                "test_list",
                "{test_list} applies to the MedFMC tasks; dataset {task!r} brings its own test split",
                task=name,
            )
        return loader(root, shots, exp, seed)

    return Dataset(name, load, _beside_list)


DATASETS: dict[str, Dataset] = {
    **{task: _medfmc(task) for task in MEDFMC_TASKS},
    "isic": _own_test("isic", lambda root, shots, exp, seed: load_isic(root, shots, exp, seed=seed)),
    "br35h": dataclasses.replace(
        _own_test("br35h", lambda root, shots, exp, seed: br35h.load_br35h(root, shots, exp, seed=seed)),
        image_list=br35h.image_list,
        default_root=br35h.locate,
    ),
    "medmnist": _own_test("medmnist", lambda root, shots, exp, seed: load_medmnist(root, shots, exp, seed=seed)),
    "csv": _own_test("csv", lambda root, shots, exp, seed: load_csv(root, shots=shots, exp=exp, seed=seed)),
    "folder": _own_test("folder", lambda root, shots, exp, seed: load_folder(root, shots=shots, exp=exp, seed=seed)),
}


def _seg(name: str, loader: Callable, default_root: Callable[[], Path] | None = None) -> Dataset:
    """A segmentation layout (:mod:`.seg`); ``--test-list`` names its test stems."""
    return Dataset(name, loader, _beside_list, default_root)


def _real(name: str) -> Callable[[], Path]:
    """The real mask set ``name`` materialised in the seg-folder layout (:func:`medpeft.data.seg_real.materialise`,
    in its default folder)."""

    def root() -> Path:
        from .seg_real import materialise

        return Path(materialise(name))

    return root


SEG_DATASETS: dict[str, Dataset] = {
    "seg-folder": _seg("seg-folder", load_seg_folder),
    "seg-csv": _seg("seg-csv", load_seg_csv),
    "seg-volumes": dataclasses.replace(_seg("seg-volumes", load_seg_volumes), sliced=True),
    "kvasir-seg": _seg("kvasir-seg", load_kvasir),
    "isic2018-seg": _seg("isic2018-seg", load_isic2018),
    **{name: _seg(name, load_seg_folder, _real(name)) for name in ("icbm152-tissue", "stardist-nuclei")},
}
DATASETS.update(SEG_DATASETS)


def get_dataset(name: str) -> Dataset:
    """The dataset kind ``name`` (a MedFMC task, isic, br35h, medmnist, csv, folder, or a segmentation layout of
    :data:`SEG_DATASETS`)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}: choose from {', '.join(DATASETS)}") from None


def load_dataset(
    name: str,
    root: str | Path | None,
    shots: int,
    exp: int = 1,
    *,
    seed: int = 0,
    test_list: str | None = None,
    axis: int | None = None,
) -> DatasetSplits:
    """The K-shot splits of experiment ``exp``: a MedFMC task, ISIC 2018, Br35H, a MedMNIST npz, a CSV, a class
    folder or a segmentation layout; ``axis``: the voxel axis volumes are sliced along (``seg-volumes``; default 2)."""
    dataset = get_dataset(name)
    if axis is None:
        return dataset.load(root, shots, exp, seed, test_list)
    if not dataset.sliced:
        raise ParameterError("axis", "{axis} applies to volumes (task seg-volumes), not task {task!r}", task=name)
    return dataset.load(root, shots, exp, seed, test_list, axis=axis)
