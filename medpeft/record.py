"""What a run is (:class:`RunSpec`) and what it left (:class:`RunRecord`): one versioned record per run, and the
files of a run directory (:data:`RUN_FILE`, :data:`WEIGHTS_FILE`, :func:`submission_name`).

A run's record is the single source of everything written about it: the run directory's ``run.json``, its line in
a bench's ``runs.jsonl`` and what ships between machines are all :meth:`RunRecord.to_dict`. The run's key and its
directory under a bench are derived from the spec (:attr:`RunSpec.key`, :attr:`RunSpec.run_dir`). Reading records
never imports the training loop.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .backbones import DEFAULT_BACKBONE
from .calibration import CHOICES as CALIBRATIONS
from .conformal import ConformalConfig
from .data import TaskSpec, parse_shots
from .errors import ParameterError, UserError
from .heads import check_head
from .methods import get_method
from .preprocessing import Preprocessing
from .types import ModelConfig, RunResult, TrainConfig

RECORD_VERSION = 1
RUN_FILE = "run.json"  #: a run directory's record
WEIGHTS_FILE = "trainable.safetensors"  #: a run directory's trained tensors
MODEL_FILE = "model.onnx"  #: the default export of a run, in its directory


def submission_name(task: str, shots: int | str) -> str:
    """The file name of a run's submission CSV: ``<task>_<K>-shot_submission.csv``."""
    return f"{task}_{shots}-shot_submission.csv"


def write_submission(path: str | Path, names: list[str], scores: np.ndarray) -> None:
    """MedFMC submission: no header, ``name,p_1,...,p_C`` with 8 decimals per probability."""
    with open(path, "w", newline="\n") as f:
        for name, row in zip(names, scores):
            f.write(name + "," + ",".join(f"{p:.8f}" for p in row) + "\n")


#: The two states of a label of a multi-label task, as the sets file names them.
STATES = ("absent", "present")


def sets_path(submission: str | Path) -> Path:
    """The prediction sets' CSV beside a submission CSV: ``chest_1-shot_submission.csv`` → ``chest_1-shot_sets.csv``,
    ``x.csv`` → ``x_sets.csv``."""
    submission = Path(submission)
    return submission.with_name(submission.stem.removesuffix("_submission") + "_sets.csv")


def write_sets(path: str | Path, names: list[str], sets: np.ndarray, task: TaskSpec) -> None:
    """Prediction sets, one image a row after a header (CSV, quoted where needed). Multi-class: ``name,set,size``,
    the set's classes joined by ``|`` (empty: no class). Multi-label: ``name,<class>,...``, each label's set of
    ``absent``/``present``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if sets.ndim == 2:
            writer.writerow(["name", "set", "size"])
            writer.writerows(
                [name, "|".join(c for c, inside in zip(task.classes, row) if inside), int(row.sum())]
                for name, row in zip(names, sets)
            )
            return
        writer.writerow(["name", *task.classes])
        writer.writerows(
            [name, *("|".join(s for s, inside in zip(STATES, label) if inside) for label in row)]
            for name, row in zip(names, sets)
        )


def method_label(method: str, options: dict[str, Any]) -> str:
    """The default label of a method with options: ``ept``, ``vp(prompt_size=4)``."""
    extra = ",".join(f"{k}={_compact(v)}" for k, v in (options or {}).items())
    return f"{method}({extra})" if extra else method


def candidate_tag(values: dict[str, Any]) -> str:
    """A searched candidate's values as a key part: ``lr=0.001,prompt_length=50`` (sorted by name)."""
    return ",".join(f"{k}={_compact(values[k])}" for k in sorted(values))


def shots_order(shots) -> tuple:
    """Sort key of a shots value: the K-shot ones by K, then the fractions (``20%``)."""
    return (1, float(str(shots).rstrip("%"))) if isinstance(shots, str) else (0, shots)


def _compact(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_compact, value)) + "]"
    return str(value)


@dataclass
class RunSpec:
    """One run: a method with options on one few-shot split of a task, a backbone and a training recipe.

    ``shots``: K of K-shot, or a percentage of the training set (``"20%"``). ``val_per_class`` caps validation at
    that many images per class (drawn seeded by seed and exp from the split's val; None: all of it).
    ``label`` names the method in tables (default :func:`method_label`). ``candidate``
    holds the values a validation search set for this run (options and ``train`` fields, already applied);
    ``refit`` marks a rerun of a selected candidate on train + val. ``calibrate``: post-hoc calibration fitted on
    validation after the epoch is selected (``none`` or a name of :data:`medpeft.calibration.CALIBRATORS`);
    ``conformal``: conformal prediction calibrated on validation, after the calibration when both are asked
    (:mod:`medpeft.conformal`; None: none). ``mean``/``std`` override the normalisation the backbone's weights
    state (``--mean/--std``; None: theirs). ``head``: the dense head of a segmentation task
    (:data:`medpeft.heads.HEADS`; None: the task kind's default); ``axis``: the voxel axis volumes are sliced along
    (``seg-volumes``; None: its default, 2). The method, its options and the recipe are
    checked on construction.
    """

    method: str
    task: str
    data_root: str
    shots: int
    exp: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    test_list: str | None = None
    val_per_class: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    candidate: dict[str, Any] = field(default_factory=dict)
    refit: bool = False
    calibrate: str = "none"
    conformal: ConformalConfig | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    head: str | None = None
    axis: int | None = None

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if isinstance(self.conformal, str):  # a bench config's `conformal: aps`
            self.conformal = None if self.conformal == "none" else {"method": self.conformal}
        if isinstance(self.conformal, dict):
            self.conformal = ConformalConfig.from_dict(self.conformal)
        self.shots = self.shots if isinstance(parse_shots(self.shots), float) else int(self.shots)
        if self.val_per_class is not None and self.val_per_class < 1:
            raise ParameterError(
                "val_per_class", "{val_per_class} {value} must be at least 1", value=self.val_per_class
            )
        if self.calibrate not in CALIBRATIONS:
            raise ParameterError(
                "calibrate",
                "{calibrate} {value!r}: choose from {choices}",
                value=self.calibrate,
                choices=list(CALIBRATIONS),
            )
        self.options = dict(self.options or {})
        get_method(self.method, **self.options)
        try:
            Preprocessing().override(self.mean, self.std)
        except UserError as err:
            raise ParameterError("mean", "{mean}/{std}: {reason}", reason=str(err)) from None
        if self.head is not None:
            check_head(self.head)
        if not self.label:
            self.label = method_label(self.method, self.options)

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def cell(self) -> tuple:
        """What a validation search chooses within: (label, task, shots, exp, seed)."""
        return self.label, self.task, self.shots, self.exp, self.seed

    @property
    def key(self) -> str:
        """``label/task/K-shot/expN/seedS``, then the candidate's values and ``refit`` where present."""
        parts = [self.label, self.task, f"{self.shots}-shot", f"exp{self.exp}", f"seed{self.seed}"]
        return "/".join(parts + self._extras())

    @property
    def run_dir(self) -> str:
        """The run's directory under a bench: ``runs/<label>/<task>_<K>-shot_exp<N>_seed<S>[/<candidate>]``."""
        name = f"{self.task}_{self.shots}-shot_exp{self.exp}_seed{self.seed}"
        path = PurePosixPath("runs", _path_safe(self.label), name, *map(_path_safe, self._extras()))
        return str(path)

    def _extras(self) -> list[str]:
        return ([candidate_tag(self.candidate)] if self.candidate else []) + (["refit"] if self.refit else [])

    def to_dict(self) -> dict[str, Any]:
        values = {**dataclasses.asdict(self), "train": dataclasses.asdict(self.train)}
        for name in ("head", "axis"):  # a classification run's spec is as before segmentation existed
            if values[name] is None:
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        return cls(**values)


def split_names(data) -> dict[str, Any]:
    """What a run saw, from its :class:`~medpeft.data.DatasetSplits`: the train and val names (train in draw order,
    repeats kept), and the test list as its size and the SHA-256 of its sorted names, one per line."""
    out = {"train": list(data.train.names), "val": None if data.val is None else list(data.val.names)}
    if data.test is not None:
        digest = hashlib.sha256("".join(f"{n}\n" for n in sorted(data.test.names)).encode()).hexdigest()
        out["test"] = {"count": len(data.test), "sha256": digest}
    return out


def _path_safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=,()[]:+%" else "_" for c in part)


@dataclass
class RunRecord:
    """A finished run: its spec, the task and model it built, the result, and where and with what it ran.

    ``selected`` is set by a bench: whether the run counts in its tables (the validation-selected candidate of its
    cell, or the only one); None outside a bench. ``worker`` says where it ran (host, pid, device, and a node or
    job id on a cluster). ``split`` names the images it trained and validated on and identifies its test list
    (:func:`split_names`), so any run can be audited for leakage.
    """

    spec: RunSpec
    task: TaskSpec
    model: ModelConfig
    result: RunResult
    versions: dict[str, str]
    worker: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    selected: bool | None = None
    version: int = RECORD_VERSION

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def test(self) -> dict[str, float] | None:
        return self.result.test_metrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the raw test scores and the logits are left out (in the submission file and ``logits.npz``)."""
        return {
            "version": self.version,
            "key": self.key,
            "spec": self.spec.to_dict(),
            "task": self.task.to_dict(),
            "model": self.model.to_dict(),
            "result": self.result.to_dict(),
            "versions": self.versions,
            "worker": self.worker,
            "split": self.split,
            "selected": self.selected,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        version = values.get("version")
        if version != RECORD_VERSION:
            raise UserError(
                f"run record of version {version!r}: this medpeft reads version {RECORD_VERSION} "
                "(rerun it, or use the medpeft release that wrote it)"
            )
        return cls(
            spec=RunSpec.from_dict(values["spec"]),
            task=TaskSpec.from_dict(values["task"]),
            model=ModelConfig.from_dict(values["model"]),
            result=RunResult.from_dict(values["result"]),
            versions=values["versions"],
            worker=values.get("worker") or {},
            split=values.get("split") or {},
            selected=values.get("selected"),
        )


def read_record(run_dir: str | Path) -> RunRecord:
    """The record of a finished run directory (UserError if it is not one)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished medpeft run directory (no {RUN_FILE})")
    try:
        values = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is not readable JSON ({err})") from None
    try:
        return RunRecord.from_dict(values)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not a medpeft run record ({type(err).__name__}: {err})") from None
