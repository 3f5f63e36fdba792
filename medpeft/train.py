"""One training and evaluation loop for every method: the paper's recipe, validation-only model selection."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .calibration import CHOICES as CALIBRATIONS
from .data import DatasetSplits, ResizedImageCache, TaskSpec
from .errors import ParameterError, UserError
from .evaluate import FeatureCache, autocast, predict_logits
from .memory import PeakMemory
from .model import PeftClassifier, count_parameters, trainable_state
from .seeding import seeded
from .task_kinds import get_kind
from .types import RunResult, TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ParameterError("device", "{device} {value!r}: {err}", value=name, err=str(err)) from None


def loss_fn(task: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task kind's loss (:meth:`~medpeft.task_kinds.TaskKind.loss`): multi-label: BCE summed over classes,
    averaged over the batch (mmcls); multi-class: softmax CE; segmentation: CE + Dice."""
    return get_kind(task.kind).loss(task)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params`` (the learning rate is set per epoch by :meth:`TrainConfig.lr_at`)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _finite_weights(model: torch.nn.Module) -> bool:
    """Whether every trainable parameter is finite (a step can leave NaN weights after a finite loss)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def fit(
    model: PeftClassifier,
    data: DatasetSplits,
    config: TrainConfig | None = None,
    *,
    cache: ResizedImageCache | None = None,
    features: FeatureCache | None = None,
    calibrate: str = "none",
    progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
    on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
) -> RunResult:
    """Train ``model`` on ``data.train``, select on ``data.val``, then score ``data.test`` once.

    Deterministic on CPU for a given ``config.seed`` (default: :class:`TrainConfig`). Only tensors with
    ``requires_grad`` are optimised; before the first step the method may initialise from the first batch
    (:meth:`~medpeft.methods.Method.init_from_data`). Without a val split (``data.val`` None) nothing is
    validated and ``select`` must be ``last``. ``cache`` decodes evaluation images once; ``features`` keeps the
    output of the model's frozen prefix for the evaluation lists (:mod:`medpeft.evaluate`). A training loss, trainable
    weight or validation logit that is not finite stops training (``diverged_epoch``). ``calibrate`` names a
    post-hoc step of :data:`medpeft.calibration.CALIBRATORS` (or ``none``), fitted on the selected epoch's
    validation logits and applied to the test logits too. Torch's global random state is seeded with
    ``config.seed`` for the run and restored after it.
    After each epoch ``log`` gets its line and ``on_epoch`` its history row (e.g. for :mod:`medpeft.tracking`).
    """
    config = config or TrainConfig()
    task = data.task
    if len(data.train) == 0 or (data.val is not None and len(data.val) == 0):
        raise UserError(f"task {task.name!r}: the train and val splits must not be empty")
    if data.val is None and config.select != "last":
        raise UserError(f"task {task.name!r}: without a val split the checkpoint must be the last one (select=last)")
    if calibrate not in CALIBRATIONS:
        raise ParameterError(
            "calibrate", "{calibrate} {value!r}: choose from {choices}", value=calibrate, choices=list(CALIBRATIONS)
        )
    if data.val is None and calibrate != "none":
        raise ParameterError(
            "calibrate",
            "task {task!r}: {calibrate} {value} needs a val split to fit on",
            task=task.name,
            value=calibrate,
        )
    if get_kind(task.kind).per_pixel != (model.config.head is not None):
        what = "a dense head" if model.config.head else "a classifier head"
        raise UserError(f"the model has {what}; task {task.name!r} is a {task.kind} task")
    if model.config.num_classes != task.num_classes:
        raise UserError(
            f"the model has {model.config.num_classes} outputs, task {task.name!r} {task.num_classes} classes"
        )
    device = resolve_device(config.device)
    with seeded(config.seed, device):
        return _fit(
            model,
            data,
            config,
            device,
            cache=cache,
            features=features,
            calibrate=calibrate,
            progress=progress,
            log=log,
            on_epoch=on_epoch,
        )


def _fit(
    model: PeftClassifier,
    data: DatasetSplits,
    config: TrainConfig,
    device: torch.device,
    *,
    cache: ResizedImageCache | None,
    features: FeatureCache | None,
    calibrate: str,
    progress: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[dict[str, Any]], None],
) -> RunResult:
    task = data.task
    kind = get_kind(task.kind)
    img_size = model.config.img_size
    model.to(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    loader = DataLoader(
        kind.train_dataset(data.train, img_size, task, model.preprocessing.mean, model.preprocessing.std),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    evaluation = dict(
        img_size=img_size,
        batch_size=config.eval_batch_size,
        cache=cache,
        features=features,
        device=device,
        bf16=config.bf16,
        num_workers=config.num_workers,
    )
    step = _Step(model, optimizer, loss_fn(task), device, config.bf16 and device.type == "cuda")
    history, best, clock, diverged = [], _Best(task.selection_metric, config.select), _Clock(), None
    with PeakMemory(device) as memory:
        for epoch in tqdm(
            range(config.epochs), desc=f"{model.config.method} {task.name}", leave=False, disable=not progress or None
        ):
            lr = config.lr_at(epoch)
            with clock("train"):
                train_loss = step.epoch(loader, lr)
            finite = math.isfinite(train_loss) and _finite_weights(model)
            with clock("val"):
                logits = None if data.val is None or not finite else predict_logits(model, data.val, task, **evaluation)
            finite = finite and (logits is None or bool(np.isfinite(logits).all()))
            if not finite:
                diverged = epoch + 1
                history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss})
                log(
                    f"epoch={epoch + 1} lr={lr:.6g} train_loss={train_loss}: diverged (loss, weights or validation "
                    "logits not finite), training stopped"
                )
                break
            val = {} if logits is None else kind.evaluate(logits, data.val, task)
            history.append(
                {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
            )
            log(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in history[-1].items()))
            on_epoch(dict(history[-1]))
            best.update(epoch + 1, val, model, logits)
        test_scores = test_metrics = calibration = logits = None
        if diverged is None:
            model.load_state_dict(best.state, strict=False)
            if data.val is not None:
                calibration = kind.calibrate(calibrate, best.logits, data.val, task)
            if data.test is not None:
                with clock("test"):
                    logits = predict_logits(model, data.test, task, **evaluation)
                calibrated = logits if calibration is None else calibration.apply(logits)
                test_scores = kind.scores(calibrated, task)
                if kind.labelled(data.test):
                    test_metrics = kind.evaluate(logits, data.test, task)
                    if calibration is not None:
                        calibration.test = kind.evaluate(calibrated, data.test, task)
    trainable, total_params = count_parameters(model)
    return RunResult(
        history,
        None if diverged else best.epoch,
        best.score if data.val is not None and diverged is None else None,
        test_metrics,
        test_scores,
        trainable,
        total_params,
        clock.seconds,
        memory.peak_mb,
        str(device),
        memory.added_mb,
        diverged,
        calibration,
        val_logits=None if diverged else best.logits,
        test_logits=logits,
    )


class _Clock:
    """Wall time per phase: ``with clock("val"): ...`` adds to ``seconds["val"]``."""

    def __init__(self):
        self.seconds = {"train": 0.0, "val": 0.0, "test": 0.0}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


class _Step:
    """Training steps of one model: ``epoch(loader, lr)`` runs one epoch and returns its mean loss.

    The first batch ever seen goes to the method first (:meth:`~medpeft.methods.Method.init_from_data`).
    """

    def __init__(self, model: PeftClassifier, optimizer, criterion, device: torch.device, bf16: bool):
        self.model, self.optimizer, self.criterion, self.device, self.bf16 = model, optimizer, criterion, device, bf16
        self.started = False

    def epoch(self, loader: DataLoader, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total, seen = 0.0, 0
        for images, targets, _ in loader:
            images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            if not self.started:
                self.model.method.init_from_data(self.model, images)
                self.started = True
            with autocast(self.device, self.bf16):
                loss = self.criterion(self.model(images).float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, seen = total + loss.item() * len(images), seen + len(images)
        return total / seen


class _Best:
    """Checkpoint selection on validation: the trainable tensors of the best epoch (the earliest on ties), or of the
    last epoch with ``select="last"``."""

    def __init__(self, metric: str, select: str):
        self.metric, self.select = metric, select
        self.epoch, self.score, self.state, self.logits = 0, -math.inf, None, None

    def update(self, epoch: int, val: dict[str, float], model: PeftClassifier, logits: np.ndarray | None) -> None:
        """Keep ``model``'s trainable tensors and its validation ``logits`` if ``epoch`` is the best so far."""
        score = val.get(self.metric)
        if self.select == "last" or score > self.score or self.state is None:
            self.epoch, self.score, self.logits = epoch, score, logits
            self.state = {k: v.clone() for k, v in trainable_state(model).items()}
