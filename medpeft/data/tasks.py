"""Classification tasks: class names, in label order, and whether the task is multi-label."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: ``classes`` in label-column order; ``multilabel`` False means one class per image.

    ``select_by`` names the validation metric that selects checkpoints and hyper-parameters (default: the
    reported one); MedFMC's ``save_best='auto'`` selects endo by AUC.
    """

    name: str
    classes: tuple[str, ...]
    multilabel: bool
    select_by: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def report_metric(self) -> str:
        """The test metric tables report, as the paper: mAP for multi-label tasks, accuracy otherwise."""
        return "mAP" if self.multilabel else "accuracy"

    @property
    def tiebreak_metric(self) -> str:
        """The validation metric that breaks ties of :attr:`selection_metric` between search candidates: AUC (a
        ranking over every image, finer than accuracy or mAP on a few images), or mAP / accuracy when AUC selects."""
        if self.selection_metric != "AUC":
            return "AUC"
        return "mAP" if self.multilabel else "accuracy"

    @property
    def selection_metric(self) -> str:
        """The validation metric (a key of :func:`medpeft.metrics.task_metrics`, greater is better) that selects."""
        return self.select_by or self.report_metric


CHEST_CLASSES = (
    "pleural_effusion",
    "nodule",
    "pneumonia",
    "cardiomegaly",
    "hilar_enlargement",
    "fracture_old",
    "fibrosis",
    "aortic_calcification",
    "tortuous_aorta",
    "thickened_pleura",
    "TB",
    "pneumothorax",
    "emphysema",
    "atelectasis",
    "calcification",
    "pulmonary_edema",
    "increased_lung_markings",
    "elevated_diaphragm",
    "consolidation",
)

MEDFMC_TASKS = ("chest", "colon", "endo")

TASKS = {
    "chest": TaskSpec("chest", CHEST_CLASSES, multilabel=True),
    "colon": TaskSpec("colon", ("negative", "positive"), multilabel=False),
    "endo": TaskSpec("endo", ("ulcer", "erosion", "polyp", "tumor"), multilabel=True, select_by="AUC"),
    "isic": TaskSpec("isic", ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"), multilabel=False),
    "br35h": TaskSpec("br35h", ("no_tumor", "tumor"), multilabel=False),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Return the built-in task called ``task`` (a :class:`TaskSpec` is returned as is)."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise UserError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}") from None
