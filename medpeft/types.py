"""The plain data types that cross layers: a training recipe (:class:`TrainConfig`), how a model was built
(:class:`ModelConfig`), what a run produced (:class:`RunResult`) and its post-hoc calibration
(:class:`Calibration`).

Nothing here trains or imports torch: records, options, tracking and reports read these without the training loop.
Each type converts to and from the JSON a run directory holds (``to_dict``/``from_dict``), unchanged on disk.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .conformal import Conformal
from .errors import ParameterError, UserError
from .preprocessing import Preprocessing


@dataclass
class TrainConfig:
    """The recipe; defaults are the paper's (SGD lr 6e-4, momentum 0.9, wd 1e-4, per-epoch cosine, 20 epochs, batch 4).

    ``select``: ``best`` takes the epoch with the best validation metric (the task's selection metric; the
    earliest on ties), ``last`` the final epoch. The test set is evaluated once, on the selected weights.
    Each field's ``help`` is the command line's (``medpeft train --lr ...``). A bad value raises a
    :class:`~medpeft.errors.ParameterError` naming the field.
    """

    epochs: int = field(default=20, metadata={"help": "Training epochs."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size."})
    lr: float = field(default=6e-4, metadata={"help": "Peak learning rate."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay."})
    optimizer: str = field(default="sgd", metadata={"choices": ("sgd", "adamw"), "help": "Optimiser."})
    schedule: str = field(
        default="cosine", metadata={"choices": ("cosine", "constant"), "help": "Per-epoch learning-rate schedule."}
    )
    warmup_epochs: int = field(default=0, metadata={"help": "Linear warm-up epochs before the schedule."})
    select: str = field(
        default="best", metadata={"choices": ("best", "last"), "help": "Checkpoint selection on validation."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the model's initial values and the data order."})
    eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 autocast on GPU."})

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if not ok and not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ParameterError(f.name, f"{{{f.name}}} {{value!r}} should be {kind.__name__}", value=value)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ParameterError(
                    f.name, f"{{{f.name}}} {{value!r}}: choose from {{choices}}", value=value, choices=list(choices)
                )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ParameterError(name, f"{{{name}}} must be at least 1")
        if self.lr <= 0:
            raise ParameterError("lr", "{lr} {value} must be positive", value=self.lr)
        for name in ("warmup_epochs", "num_workers", "weight_decay"):
            if getattr(self, name) < 0:
                raise ParameterError(name, f"{{{name}}} {{value}} must not be negative", value=getattr(self, name))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a mapping of field values, naming unknown fields in a one-line error."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise UserError(f"unknown training option(s) {unknown}; valid: {valid}")
        return cls(**values)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (0-based): linear warm-up, then cosine to 0 over the remaining epochs."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return self.lr
        span = self.epochs - self.warmup_epochs
        return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))


@dataclass
class ModelConfig:
    """How a :class:`~medpeft.model.PeftClassifier` was built: the method and its resolved options, the backbone's
    name (``custom`` for a built model without one), the number of classes, the input size, the
    :class:`~medpeft.preprocessing.Preprocessing` its weights expect (or ``--mean/--std`` set) and the dense head
    (:data:`medpeft.heads.HEADS`; None: a classifier on the pooled feature). Stored in a run's
    record (``model``) and in the metadata of its ``trainable.safetensors``, as :meth:`to_dict`."""

    method: str
    options: dict[str, Any]
    backbone: str
    num_classes: int
    img_size: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    head: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {**dataclasses.asdict(self), "preprocessing": self.preprocessing.to_dict()}
        if values["head"] is None:  # a classifier's config is as before dense heads existed
            values.pop("head")
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """A stored config; one written before the preprocessing was recorded was trained with ImageNet's."""
        stored = values.get("preprocessing")
        preprocessing = (
            Preprocessing.from_dict(stored)
            if stored
            else Preprocessing(img_size=int(values["img_size"]), source="ImageNet statistics (not recorded)")
        )
        return cls(
            values["method"],
            dict(values.get("options") or {}),
            values["backbone"],
            int(values["num_classes"]),
            int(values["img_size"]),
            preprocessing,
            values.get("head"),
        )


@dataclass
class Calibration:
    """A post-hoc calibration fitted on validation logits (:mod:`medpeft.calibration`): the ``method``, its
    ``temperature`` T (logits are divided by it: :meth:`apply`), the validation NLL before (T = 1) and after, a
    ``note`` saying why T was left at 1, and ``test``: the test metrics after calibration (None when the test set
    has no labels)."""

    method: str
    temperature: float
    val_nll_before: float
    val_nll_after: float
    note: str | None = None
    test: dict[str, float] | None = None

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The calibrated logits."""
        return logits / self.temperature

    def to_dict(self) -> dict[str, Any]:
        """As in ``run.json``: ``test`` only where it was measured."""
        values = dataclasses.asdict(self)
        if values["test"] is None:
            values.pop("test")
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Calibration | None:
        return None if values is None else cls(**values)


@dataclass
class RunResult:
    """What one training run produced: the validation curve, the selected epoch and its validation score, the test
    metrics and scores of the selected weights, and the run's cost: ``time_s`` splits its wall time into
    ``train`` (the training steps), ``val`` (validation every epoch) and ``test``; ``peak_memory_mb`` is the
    peak during the run (on CPU the whole process's resident size) and ``added_memory_mb`` that peak minus the
    level at the run's start. ``diverged_epoch``: the epoch after which the training loss, a trainable weight or a
    validation logit was not finite (training stopped there; no epoch is selected and the test set is not scored).
    ``calibration``: the post-hoc calibration fitted on validation, with the test metrics after it
    (``test_metrics`` stay the uncalibrated ones); ``test_scores`` are then the calibrated probabilities.
    ``conformal``: conformal prediction calibrated on validation (:mod:`medpeft.conformal`, a post-hoc step after
    ``fit``). ``val_logits`` (the selected epoch's) and ``test_logits`` are what post-hoc steps start from (kept in
    the run's ``logits.npz``, not in ``run.json``)."""

    history: list[dict[str, Any]]
    selected_epoch: int | None
    val_best: float | None
    test_metrics: dict[str, float] | None
    test_scores: np.ndarray | None
    trainable_params: int
    total_params: int
    time_s: dict[str, float]
    peak_memory_mb: float | None
    device: str
    added_memory_mb: float | None = None
    diverged_epoch: int | None = None
    calibration: Calibration | None = None
    conformal: Conformal | None = None
    val_logits: np.ndarray | None = None
    test_logits: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as in ``run.json``; the raw test scores and the logits are left out (they are in the
        submission file and ``logits.npz``)."""
        values = dataclasses.asdict(
            dataclasses.replace(self, test_scores=None, calibration=None, val_logits=None, test_logits=None)
        )
        for name in ("test_scores", "val_logits", "test_logits"):
            values.pop(name)
        values["calibration"] = None if self.calibration is None else self.calibration.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResult:
        """From :meth:`to_dict`'s output (the test scores are not in it: None; a record written before conformal
        prediction has none)."""
        conformal = values.get("conformal")
        return cls(
            **{
                **values,
                "calibration": Calibration.from_dict(values.get("calibration")),
                "conformal": None if conformal is None else Conformal.from_dict(conformal),
                "test_scores": None,
            }
        )
