"""One experiment from data to files: a run directory a person can open.

A run directory holds ``config.json`` (everything needed to rebuild the model), ``log.txt`` (one line per epoch),
``trainable.safetensors`` (only the trained tensors), ``<task>_<K>-shot_submission.csv`` (the test list in the
MedFMC submission format) and ``metrics.json`` (validation curve, selected epoch, test metrics), written last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data import (DatasetSplits, ResizedImageCache, load_csv, load_folder, load_isic, load_medfmc, load_medmnist)
from .errors import UserError
from .methods import get_method
from .model import PeftClassifier, build_model, load_trainable, save_trainable
from .train import RunResult, TrainConfig, fit, seed_everything

MEDFMC_TASKS = ("chest", "colon", "endo")
DATASETS = MEDFMC_TASKS + ("isic", "medmnist", "csv", "folder")


@dataclass
class RunSpec:
    """What to train, on what, and how. ``options`` are the method's; ``train`` the :class:`TrainConfig` fields."""

    method: str
    task: str
    data_root: str
    shots: int
    exp: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    backbone: str = "vit_base_patch16_224.orig_in21k"
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    test_list: str | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        try:
            return TrainConfig(**self.train)
        except TypeError:
            valid = [f.name for f in dataclasses.fields(TrainConfig)]
            raise UserError(f"unknown training option(s) {sorted(set(self.train) - set(valid))}; valid: {valid}") from None


def load_data(task: str, data_root: str, shots: int, exp: int = 1, seed: int = 0,
              test_list: str | None = None) -> DatasetSplits:
    """The K-shot splits of experiment ``exp`` for a MedFMC task, ISIC 2018, a MedMNIST npz, a CSV or a class folder."""
    if task in MEDFMC_TASKS:
        return load_medfmc(data_root, task, shots, exp, test_list=test_list)
    if task == "isic":
        return load_isic(data_root, shots, exp, seed=seed)
    if task == "medmnist":
        return load_medmnist(data_root, shots, exp, seed=seed)
    if task == "csv":
        return load_csv(data_root, shots=shots, exp=exp, seed=seed)
    if task == "folder":
        return load_folder(data_root, shots=shots, exp=exp, seed=seed)
    raise UserError(f"unknown task {task!r}: choose from {', '.join(DATASETS)}")


def submission_name(task: str, shots: int) -> str:
    return f"{task}_{shots}-shot_submission.csv"


def write_submission(path: str | Path, names: list[str], scores: np.ndarray) -> None:
    """MedFMC submission: no header, ``name,p_1,...,p_C`` with 8 decimals per probability."""
    with open(path, "w", newline="\n") as f:
        for name, row in zip(names, scores):
            f.write(name + "," + ",".join(f"{p:.8f}" for p in row) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for people to read
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def run_experiment(spec: RunSpec, out: str | Path, *, cache: ResizedImageCache | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train ``spec`` and write its run directory ``out``; returns the contents of ``metrics.json``."""
    config = spec.train_config()
    get_method(spec.method, **spec.options)  # a mistyped method, option or weights path fails before data is read
    if spec.weights is not None and not Path(spec.weights).is_file():
        raise UserError(f"weights file {spec.weights} not found")
    data = load_data(spec.task, spec.data_root, spec.shots, spec.exp, config.seed, spec.test_list)
    data.check_images()
    seed_everything(config.seed)  # a randomly initialised backbone is then reproducible (see load_run)
    model = build_model(spec.method, spec.backbone, data.task.num_classes, pretrained=spec.pretrained,
                        weights=spec.weights, img_size=spec.img_size, **spec.options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    write_json(out / "config.json", {**dataclasses.asdict(spec), "train": dataclasses.asdict(config),
                                     "model": model.config, "classes": list(data.task.classes),
                                     "multilabel": data.task.multilabel,
                                     "versions": versions()})
    with open(out / "log.txt", "w") as log:
        result = fit(model, data, config, cache=cache, progress=progress,
                     log=lambda line: (log.write(line + "\n"), log.flush()))
    save_trainable(model, out / "trainable.safetensors")
    if result.test_scores is not None:
        write_submission(out / submission_name(spec.task, spec.shots), data.test.names, result.test_scores)
    record = summarize(result)
    write_json(out / "metrics.json", record)
    return record


def summarize(result: RunResult) -> dict[str, Any]:
    """The JSON-ready part of a :class:`RunResult` (everything but the raw test scores)."""
    record = dataclasses.asdict(result)
    record.pop("test_scores")
    record["val_best"] = result.history[result.selected_epoch - 1][f"val_{result.selection_metric}"]
    return record


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``config.json`` (UserError if it has none or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir} is not a medpeft run directory (config.json: {err})") from None


def load_run(run_dir: str | Path, *, device: str = "cpu") -> tuple[PeftClassifier, dict[str, Any]]:
    """The trained model of a run directory (backbone weights as the run got them) and its config."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if not (run_dir / "trainable.safetensors").is_file():
        raise UserError(f"{run_dir} has no trainable.safetensors: the run did not finish")
    seed_everything(config["train"]["seed"])  # the same random init where the backbone was not pretrained
    model = load_trainable(run_dir / "trainable.safetensors", pretrained=config["pretrained"],
                           weights=config["weights"], backbone=config["backbone"])
    return model.to(device).eval(), config


def versions() -> dict[str, str]:
    import timm

    return {"medpeft": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
