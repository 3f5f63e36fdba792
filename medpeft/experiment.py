"""One run from data to files: a run directory a person can open, and what can be done with it later.

A run directory holds ``run.json`` (the :class:`~medpeft.record.RunRecord`: spec, task, model, validation curve,
selected epoch, test metrics, cost), ``log.txt`` (one line per epoch), ``trainable.safetensors`` (the trained
tensors), ``logits.npz`` (the selected epoch's validation logits and the test logits, for post-hoc steps:
:mod:`medpeft.posthoc`), ``<task>_<K>-shot_submission.csv`` (the test list in the MedFMC submission format) and,
with conformal prediction, ``<task>_<K>-shot_sets.csv`` (each test image's prediction set). It is written
in a hidden sibling and moved into place when the run finishes: a run directory is always complete.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import check_backbone
from .conformal import prediction_sets, temper
from .data import DatasetSplits, ResizedImageCache, Samples, check_files, get_dataset, load_dataset
from .errors import ParameterError, UserError
from .evaluate import FeatureCache, predict
from .files import staged_dir, write_json
from .model import PeftClassifier, build_model, load_trainable, save_trainable
from .posthoc import LOGITS_FILE, KeptLogits, conformal_of, write_test_files
from .record import (
    RUN_FILE,
    WEIGHTS_FILE,
    RunRecord,
    RunSpec,
    read_record,
    split_names,
)
from .task_kinds import get_kind
from .tracking import RunListener, track_run
from .train import fit
from .types import RunResult
from .version import __version__


def check_spec(spec: RunSpec) -> None:
    """Everything about ``spec`` that can fail before any data is read: method and options (checked when the spec
    was made), the backbone name, image size and weights file."""
    check_backbone(spec.backbone, img_size=spec.img_size, weights=spec.weights)


def run_experiment(
    spec: RunSpec,
    out: str | Path,
    *,
    cache: ResizedImageCache | None = None,
    features: FeatureCache | None = None,
    progress: bool = True,
    overwrite: bool = False,
    worker: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
) -> RunRecord:
    """Train ``spec`` and write its run directory ``out``; returns its record.

    ``cache`` decodes evaluation images once, ``features`` keeps the frozen prefix's output for them (see
    :func:`medpeft.train.fit`). An existing run in ``out`` is an error unless ``overwrite``; then it is replaced only
    once the new run has finished. ``worker`` adds to the record's description of where the run ran.
    ``on_epoch`` gets each epoch's history row (a tracker's hook, :mod:`medpeft.tracking`).
    """
    out = Path(out)
    check_out(out, overwrite)
    check_spec(spec)
    data = load_splits(spec)
    data.check_images()
    if spec.conformal is not None and not get_kind(data.task.kind).keeps_logits:
        raise ParameterError("conformal", "{conformal} applies to classification tasks, not {task}", task=spec.task)
    model = build_model(
        spec.method,
        spec.backbone,
        data.task.num_classes,
        pretrained=spec.pretrained,
        weights=spec.weights,
        img_size=spec.img_size,
        seed=spec.seed,
        mean=spec.mean,
        std=spec.std,
        head=get_kind(data.task.kind).head(spec.head),
        **spec.options,
    )
    with staged_dir(out, replace=overwrite) as stage:
        with open(stage / "log.txt", "w") as log:
            result = fit(
                model,
                data,
                spec.train,
                cache=cache,
                features=features,
                calibrate=spec.calibrate,
                progress=progress,
                log=lambda line: (log.write(line + "\n"), log.flush()),
                on_epoch=on_epoch,
            )
        save_trainable(model, stage / WEIGHTS_FILE)
        kept = kept_logits(result, data)
        if kept is not None:
            kept.save(stage / LOGITS_FILE)
            if spec.conformal is not None:
                result.conformal = conformal_of(
                    kept, data.task, spec.conformal, calibration=result.calibration, seed=spec.seed
                )
        if result.test_scores is not None:
            write_test_files(stage, spec, data.task, data.test.names, result.test_scores, result.conformal)
        record = RunRecord(
            spec,
            data.task,
            model.config,
            result,
            versions(),
            {**where(result.device), **(worker or {})},
            split_names(data),
        )
        write_json(stage / RUN_FILE, record.to_dict())
    return record


def kept_logits(result: RunResult, data: DatasetSplits) -> KeptLogits | None:
    """What post-hoc steps need of a finished run (None without validation logits: no val split, or diverged; or
    for a task kind that keeps none)."""
    if result.val_logits is None or not get_kind(data.task.kind).keeps_logits:
        return None
    test = data.test if result.test_logits is not None else None
    return KeptLogits(
        result.val_logits,
        list(data.val.names),
        data.val.labels,
        result.test_logits,
        None if test is None else list(test.names),
        None if test is None else test.labels,
    )


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """That ``out`` can take a new run: it holds none, or ``overwrite`` replaces it."""
    if (Path(out) / RUN_FILE).is_file() and not overwrite:
        raise ParameterError(
            "out", "{path} already holds a run: pass {overwrite} to replace it, or choose another {out}", path=out
        )


def run_tracked(spec: RunSpec, out: str | Path, listener: RunListener | None = None, **options: Any) -> RunRecord:
    """:func:`run_experiment` with ``listener`` (a tracker, e.g. :class:`~medpeft.tracking.MlflowRun`; None: none)
    told of the run's start, epochs and end; ``options`` are :func:`run_experiment`'s."""
    return track_run(
        listener or RunListener(), spec, out, lambda on_epoch: run_experiment(spec, out, on_epoch=on_epoch, **options)
    )


def load_splits(spec: RunSpec) -> DatasetSplits:
    """The run's data: its split, validation capped at ``val_per_class``, and for a refit val merged into train."""
    data = load_dataset(
        spec.task, spec.data_root, spec.shots, spec.exp, seed=spec.seed, test_list=spec.test_list, axis=spec.axis
    )
    if spec.val_per_class is not None:
        if get_kind(data.task.kind).per_pixel:
            raise ParameterError(
                "val_per_class", "{val_per_class} applies to classification tasks, not {task}", task=spec.task
            )
        data = data.with_val_per_class(spec.val_per_class, seed=(spec.seed, spec.exp))
    return data.with_val_in_train() if spec.refit else data


def load_run(run_dir: str | Path, *, device: str = "cpu") -> tuple[PeftClassifier, RunRecord]:
    """The trained model of a run directory (frozen backbone as the run got it) and its record."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    spec = record.spec
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise UserError(
            f"{run_dir} has no trained weights ({WEIGHTS_FILE}; a run restored from a bench's runs.jsonl "
            f"keeps only its record): rerun it, e.g. by deleting the directory and rerunning the bench"
        )
    model = load_trainable(
        run_dir / WEIGHTS_FILE, pretrained=spec.pretrained, weights=spec.weights, backbone=spec.backbone, seed=spec.seed
    )
    return model.to(device).eval(), record


def predict_list(
    run_dir: str | Path,
    list_file: str | Path,
    *,
    data_root: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """``(names, probabilities)`` of a trained run for every image of ``list_file`` (names only or labelled),
    found where the run's dataset keeps them (``data_root`` overrides the run's); every image is checked first."""
    samples = list_samples(read_record(run_dir), list_file, data_root)
    check_files(samples.sources, f"images of {list_file}")
    model, record = load_run(run_dir, device=str(device))
    scores = predict(
        model,
        samples,
        record.task,
        img_size=model.config.img_size,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return samples.names, scores


def list_sets(record: RunRecord, scores: np.ndarray) -> np.ndarray:
    """The conformal sets of a run for a list's probabilities ``scores`` (uncalibrated, as :func:`predict_list`
    gives them): the run's temperature applied first where its conformal step came after one."""
    conformal = record.result.conformal
    if conformal.after == "temperature":
        scores = temper(scores, record.result.calibration.temperature, record.task.multilabel)
    return prediction_sets(
        scores,
        conformal.qhat,
        conformal.config,
        multilabel=record.task.multilabel,
        seed=record.spec.seed,
        threshold=conformal.threshold,
    )


def list_samples(record: RunRecord, list_file: str | Path, data_root: str | None = None) -> Samples:
    """The images of ``list_file`` (names only or labelled) where the run's dataset keeps them (``data_root``
    overrides the run's)."""
    return get_dataset(record.spec.task).image_list(data_root or record.spec.data_root, str(list_file))


def versions() -> dict[str, str]:
    import timm

    return {
        "medpeft": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def where(device: str) -> dict[str, Any]:
    """Where this process runs: host, pid and device (with the GPU's name)."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info
