"""Post-hoc steps on a run's kept logits: temperature scaling, then conformal prediction; never training again.

Every run keeps ``logits.npz`` beside its ``run.json`` (:class:`KeptLogits`: the validation logits of the selected
epoch and the test logits, with the image names and labels). :func:`apply` computes what a run asks for from them:
a temperature fitted on validation (:mod:`medpeft.calibration`) and the test metrics after it, then conformal sets
calibrated on validation (:mod:`medpeft.conformal`), on the temperature-scaled probabilities when both are asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibration import calibrate_logits
from .conformal import Conformal, ConformalConfig, conformal_step, prediction_sets
from .data import TaskSpec
from .errors import UserError
from .evaluate import scores_of
from .metrics import task_metrics
from .record import RUN_FILE, RunSpec, read_record, sets_path, submission_name, write_sets, write_submission
from .types import Calibration

LOGITS_FILE = "logits.npz"


@dataclass
class KeptLogits:
    """A run's validation logits at the selected epoch and its test logits (float32, (n, C)), with the image names
    and labels ((n,) class indices or (n, C) 0/1; test labels None for an unlabelled test list)."""

    val: np.ndarray
    val_names: list[str]
    val_labels: np.ndarray
    test: np.ndarray | None = None
    test_names: list[str] | None = None
    test_labels: np.ndarray | None = None

    def save(self, path: str | Path) -> None:
        arrays = {"val": self.val, "val_names": np.array(self.val_names, dtype=str), "val_labels": self.val_labels}
        if self.test is not None:
            arrays.update(test=self.test, test_names=np.array(self.test_names, dtype=str))
            if self.test_labels is not None:
                arrays["test_labels"] = self.test_labels
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> KeptLogits:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    z["val"],
                    z["val_names"].tolist(),
                    z["val_labels"],
                    z["test"] if "test" in z else None,
                    z["test_names"].tolist() if "test" in z else None,
                    z["test_labels"] if "test_labels" in z else None,
                )
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{path} is not a medpeft logits file ({err}): rerun the run") from None


def probabilities(logits: np.ndarray, task: TaskSpec, calibration: Calibration | None = None) -> np.ndarray:
    """The probabilities of ``logits``, calibrated when given, as a run computes them
    (:func:`~medpeft.evaluate.scores_of`)."""
    return scores_of(logits if calibration is None else calibration.apply(logits), task)


def calibration_step(kept: KeptLogits, task: TaskSpec, calibrate: str) -> Calibration | None:
    """The calibration ``calibrate`` (:data:`medpeft.calibration.CHOICES`) fitted on validation, with the test
    metrics after it when the test list is labelled; None for ``none``."""
    calibration = calibrate_logits(calibrate, kept.val, kept.val_labels, task.multilabel)
    if calibration is not None and kept.test is not None and kept.test_labels is not None:
        calibration.test = task_metrics(probabilities(kept.test, task, calibration), kept.test_labels, task.multilabel)
    return calibration


def conformal_of(
    kept: KeptLogits, task: TaskSpec, config: ConformalConfig, *, calibration: Calibration | None = None, seed: int = 0
) -> Conformal:
    """Conformal sets calibrated on validation and scored on test, after ``calibration`` when given."""
    return conformal_step(
        probabilities(kept.val, task, calibration),
        kept.val_labels,
        None if kept.test is None else probabilities(kept.test, task, calibration),
        kept.test_labels,
        config,
        multilabel=task.multilabel,
        classes=list(task.classes),
        seed=seed,
        after=None if calibration is None else calibration.method,
    )


def apply(
    kept: KeptLogits, task: TaskSpec, *, calibrate: str, conformal: ConformalConfig | None, seed: int
) -> tuple[Calibration | None, Conformal | None, np.ndarray | None]:
    """(calibration, conformal, test probabilities) of a run: ``calibrate`` fits a calibration, then conformal runs
    after it. The test probabilities are the calibrated ones where a calibration was fitted."""
    calibration = calibration_step(kept, task, calibrate)
    result = None if conformal is None else conformal_of(kept, task, conformal, calibration=calibration, seed=seed)
    scores = None if kept.test is None else probabilities(kept.test, task, calibration)
    return calibration, result, scores


def write_test_files(
    run_dir: Path, spec: RunSpec, task: TaskSpec, names: list[str], scores: np.ndarray, conformal: Conformal | None
) -> None:
    """The run's submission CSV of its test ``scores`` and, with ``conformal``, its prediction sets (computed from
    the same ``scores``: calibrated when the run fitted a temperature)."""
    write_submission(run_dir / submission_name(spec.task, spec.shots), names, scores)
    path = sets_path(run_dir / submission_name(spec.task, spec.shots))
    if conformal is not None:
        sets = prediction_sets(
            scores,
            conformal.qhat,
            conformal.config,
            multilabel=task.multilabel,
            seed=spec.seed,
            threshold=conformal.threshold,
        )
        write_sets(path, names, sets, task)
    elif path.is_file():
        path.unlink()


def recompute_run(run_dir: str | Path, *, calibrate: str | None = None, conformal: ConformalConfig | str | None = None):
    """Recompute a finished run's post-hoc results from its ``logits.npz`` and rewrite its ``run.json``, submission
    and sets files; returns its record, or None for a run without kept logits. ``calibrate`` and ``conformal``
    replace the run's own settings (None: keep them; ``"none"``: drop the step)."""
    from .files import write_json

    run_dir = Path(run_dir)
    if not (run_dir / LOGITS_FILE).is_file():
        return None
    record = read_record(run_dir)
    kept = KeptLogits.load(run_dir / LOGITS_FILE)
    changes = {} if calibrate is None else {"calibrate": calibrate}
    if conformal is not None:
        changes["conformal"] = None if conformal == "none" else conformal
    spec = record.spec = dataclasses.replace(record.spec, **changes)
    record.result.calibration, record.result.conformal, scores = apply(
        kept, record.task, calibrate=spec.calibrate, conformal=spec.conformal, seed=spec.seed
    )
    if scores is not None:
        write_test_files(run_dir, spec, record.task, kept.test_names, scores, record.result.conformal)
    write_json(run_dir / RUN_FILE, record.to_dict())
    return record
