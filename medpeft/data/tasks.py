"""Classification tasks: class names, in label order, and whether the task is multi-label."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: ``classes`` in label-column order; ``multilabel`` False means one class per image."""

    name: str
    classes: tuple[str, ...]
    multilabel: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


CHEST_CLASSES = (
    "pleural_effusion", "nodule", "pneumonia", "cardiomegaly", "hilar_enlargement", "fracture_old", "fibrosis",
    "aortic_calcification", "tortuous_aorta", "thickened_pleura", "TB", "pneumothorax", "emphysema", "atelectasis",
    "calcification", "pulmonary_edema", "increased_lung_markings", "elevated_diaphragm", "consolidation",
)

TASKS = {
    "chest": TaskSpec("chest", CHEST_CLASSES, multilabel=True),
    "colon": TaskSpec("colon", ("negative", "positive"), multilabel=False),
    "endo": TaskSpec("endo", ("ulcer", "erosion", "polyp", "tumor"), multilabel=True),
    "isic": TaskSpec("isic", ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"), multilabel=False),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Return the built-in task called ``task`` (a :class:`TaskSpec` is returned as is)."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise UserError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}") from None
