"""Tasks: class names, in label order, whether a classification task is multi-label, and the task's kind
(:mod:`medpeft.task_kinds`: classification or segmentation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``classes`` in label-column order; ``multilabel`` False means one class per image (or per pixel).

    ``select_by`` names the validation metric that selects checkpoints and hyper-parameters (default: the
    reported one); MedFMC's ``save_best='auto'`` selects endo by AUC. ``kind`` names the task's
    :class:`~medpeft.task_kinds.TaskKind` (``classification`` or ``segmentation``), which owns the head, loss,
    metrics and calibration; ``values`` (segmentation) is the mask value of each class.
    """

    name: str
    classes: tuple[str, ...]
    multilabel: bool
    select_by: str | None = None
    kind: str = "classification"
    values: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def report_metric(self) -> str:
        """The test metric tables report: mIoU for segmentation; as the paper, mAP for multi-label classification,
        accuracy otherwise."""
        if self.kind == "segmentation":
            return "mIoU"
        return "mAP" if self.multilabel else "accuracy"

    @property
    def tiebreak_metric(self) -> str:
        """The validation metric that breaks ties of :attr:`selection_metric` between search candidates: pixel
        accuracy for segmentation; AUC (a ranking over every image, finer than accuracy or mAP on a few images), or
        mAP / accuracy when AUC selects."""
        if self.kind == "segmentation":
            return "aAcc"
        if self.selection_metric != "AUC":
            return "AUC"
        return "mAP" if self.multilabel else "accuracy"

    @property
    def selection_metric(self) -> str:
        """The validation metric (greater is better) that selects."""
        return self.select_by or self.report_metric

    def to_dict(self) -> dict:
        """As a run record holds it; a classification task's record is as before task kinds existed."""
        values = {**dataclasses.asdict(self), "classes": list(self.classes)}
        if self.kind == "classification":
            values.pop("kind")
            values.pop("values")
        else:
            values["values"] = None if self.values is None else list(self.values)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TaskSpec:
        stored = values.get("values")
        return cls(
            values["name"],
            tuple(values["classes"]),
            values["multilabel"],
            values.get("select_by"),
            values.get("kind", "classification"),
            None if stored is None else tuple(int(v) for v in stored),
        )


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
