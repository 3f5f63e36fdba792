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
from typing import Any

import numpy as np

from .calibration import fit_temperature
from .conformal import Conformal, ConformalConfig, conformal_step
from .data import TaskSpec
from .errors import UserError
from .evaluate import scores_of
from .metrics import task_metrics

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
                return cls(z["val"], z["val_names"].tolist(), z["val_labels"],
                           z["test"] if "test" in z else None, z["test_names"].tolist() if "test" in z else None,
                           z["test_labels"] if "test_labels" in z else None)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{path} is not a medpeft logits file ({err}): rerun the run") from None


def probabilities(logits: np.ndarray, task: TaskSpec, temperature: float | None = None) -> np.ndarray:
    """The probabilities of ``logits / temperature`` as a run computes them (:func:`~medpeft.evaluate.scores_of`)."""
    return scores_of(logits if temperature is None else logits / temperature, task)


def temperature_step(kept: KeptLogits, task: TaskSpec) -> dict[str, Any]:
    """Temperature scaling fitted on validation: ``{method, temperature, val_nll_before, val_nll_after, note,
    test}`` (``test``: the test metrics after it, when the test list is labelled)."""
    fitted = fit_temperature(kept.val, kept.val_labels, task.multilabel)
    calibration = {"method": "temperature", **dataclasses.asdict(fitted)}
    if kept.test is not None and kept.test_labels is not None:
        scores = probabilities(kept.test, task, fitted.temperature)
        calibration["test"] = task_metrics(scores, kept.test_labels, task.multilabel)
    return calibration


def conformal_of(kept: KeptLogits, task: TaskSpec, config: ConformalConfig, *, temperature: float | None = None,
                 seed: int = 0) -> Conformal:
    """Conformal sets calibrated on validation and scored on test, after ``temperature`` when given."""
    return conformal_step(probabilities(kept.val, task, temperature), kept.val_labels,
                          None if kept.test is None else probabilities(kept.test, task, temperature),
                          kept.test_labels, config, multilabel=task.multilabel, classes=list(task.classes), seed=seed,
                          after=None if temperature is None else "temperature")


def apply(kept: KeptLogits, task: TaskSpec, *, calibrate: str, conformal: ConformalConfig | None,
          seed: int) -> tuple[dict[str, Any] | None, Conformal | None, np.ndarray | None]:
    """(calibration, conformal, test probabilities) of a run: ``calibrate`` ``temperature`` fits a temperature,
    then conformal runs after it. The test probabilities are the calibrated ones where a temperature was fitted."""
    if calibrate not in ("none", "temperature"):
        raise UserError(f"--calibrate {calibrate!r}: choose from ['none', 'temperature']")
    calibration = temperature_step(kept, task) if calibrate == "temperature" else None
    temperature = None if calibration is None else calibration["temperature"]
    result = None if conformal is None else conformal_of(kept, task, conformal, temperature=temperature, seed=seed)
    scores = None if kept.test is None else probabilities(kept.test, task, temperature)
    return calibration, result, scores


def recompute_run(run_dir: str | Path, *, calibrate: str | None = None,
                  conformal: ConformalConfig | str | None = None):
    """Recompute a finished run's post-hoc results from its ``logits.npz`` and rewrite its ``run.json``, submission
    and sets files; returns its record, or None for a run without kept logits. ``calibrate`` and ``conformal``
    replace the run's own settings (None: keep them; ``"none"``: drop the step)."""
    from .experiment import RUN_FILE, read_record, write_test_files
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
        kept, record.task, calibrate=spec.calibrate, conformal=spec.conformal, seed=spec.seed)
    if scores is not None:
        write_test_files(run_dir, spec, record.task, kept.test_names, scores, record.result.conformal)
    write_json(run_dir / RUN_FILE, record.to_dict())
    return record
