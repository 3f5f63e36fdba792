"""One training and evaluation loop for every method: the paper's recipe, validation-only model selection."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics
from .data import DatasetSplits, ResizedImageCache, Samples, TaskSpec, eval_dataset, train_dataset
from .errors import UserError
from .memory import PeakMemory
from .model import PeftClassifier, count_parameters, trainable_state


@dataclass
class TrainConfig:
    """The recipe; defaults are the paper's (SGD lr 6e-4, momentum 0.9, wd 1e-4, per-epoch cosine, 20 epochs, batch 4).

    ``select``: ``best`` takes the epoch with the best validation metric (the task's selection metric; the
    earliest on ties), ``last`` the final epoch. The test set is evaluated once, on the selected weights.
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 6e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = field(default="sgd", metadata={"choices": ("sgd", "adamw")})
    schedule: str = field(default="cosine", metadata={"choices": ("cosine", "constant")})
    warmup_epochs: int = 0
    select: str = field(default="best", metadata={"choices": ("best", "last")})
    seed: int = 0
    eval_batch_size: int = 32
    num_workers: int = 0
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UserError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r}: choose from {list(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise UserError(f"--lr {self.lr} must be positive")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (0-based): linear warm-up, then cosine to 0 over the remaining epochs."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return self.lr
        span = self.epochs - self.warmup_epochs
        return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))


@dataclass
class RunResult:
    """What one training run produced."""

    history: list[dict[str, Any]]
    selected_epoch: int
    selection_metric: str
    test_metrics: dict[str, float] | None
    test_scores: np.ndarray | None
    trainable_params: int
    total_params: int
    train_time_s: float
    peak_memory_mb: float | None
    device: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r}: {err}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_fn(task: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Multi-label: BCE summed over classes, averaged over the batch (mmcls); multi-class: softmax CE."""
    if task.multilabel:
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]
    return F.cross_entropy


def probabilities(logits: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Sigmoid for multi-label tasks, softmax otherwise (what the submission files hold)."""
    return logits.sigmoid() if task.multilabel else logits.softmax(dim=-1)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict(model: PeftClassifier, samples: Samples, task: TaskSpec, *, img_size: int, batch_size: int = 32,
            cache: ResizedImageCache | None = None, device: torch.device | str = "cpu", bf16: bool = True,
            num_workers: int = 0, progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Probabilities (n, C) for ``samples``, square-resized as at test time."""
    device = torch.device(device)
    loader = DataLoader(eval_dataset(samples, img_size, cache, task=task), batch_size=batch_size,
                        num_workers=num_workers)
    model.eval()
    out = []
    for images, _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress or None):
        with _autocast(device, bf16):
            logits = model(images.to(device, non_blocking=True))
        out.append(probabilities(logits.float(), task).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, task.num_classes), dtype=np.float32)


def evaluate(scores: np.ndarray, samples: Samples, task: TaskSpec) -> dict[str, float]:
    return metrics.task_metrics(scores, samples.labels, task.multilabel)


def fit(model: PeftClassifier, data: DatasetSplits, config: TrainConfig = TrainConfig(), *,
        cache: ResizedImageCache | None = None, progress: bool = True,
        log: Callable[[str], None] = lambda line: None) -> RunResult:
    """Train ``model`` on ``data.train``, select on ``data.val``, then score ``data.test`` once.

    Deterministic on CPU for a given ``config.seed``. Only tensors with ``requires_grad`` are optimised.
    """
    task = data.task
    if len(data.train) == 0 or len(data.val) == 0:
        raise UserError(f"task {task.name!r}: the train and val splits must not be empty")
    if model.config["num_classes"] != task.num_classes:
        raise UserError(f"the model has {model.config['num_classes']} outputs, task {task.name!r} {task.num_classes} classes")
    device = resolve_device(config.device)
    img_size = model.config["img_size"]
    selection = metrics.selection_metric(task.name, task.multilabel)
    seed_everything(config.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
                 if config.optimizer == "sgd" else
                 torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay))
    loader = DataLoader(train_dataset(data.train, img_size, task=task), batch_size=config.batch_size, shuffle=True,
                        num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed),
                        pin_memory=device.type == "cuda")
    criterion = loss_fn(task)
    evaluation = dict(img_size=img_size, batch_size=config.eval_batch_size, cache=cache, device=device,
                      bf16=config.bf16, num_workers=config.num_workers)
    history, best, best_state = [], -math.inf, None
    memory = PeakMemory(device)
    start = time.perf_counter()
    with memory:
        for epoch in tqdm(range(config.epochs), desc=f"{model.config['method']} {task.name}", leave=False,
                          disable=not progress or None):
            lr = config.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            total, seen = 0.0, 0
            for images, targets, _ in loader:
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                with _autocast(device, config.bf16):
                    loss = criterion(model(images).float(), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(images), seen + len(images)
            if not math.isfinite(total):
                raise UserError(f"training diverged at epoch {epoch + 1} (loss {total}): lower --lr")
            val = evaluate(predict(model, data.val, task, **evaluation), data.val, task)
            history.append({"epoch": epoch + 1, "lr": lr, "train_loss": total / seen, **{f"val_{k}": v for k, v in val.items()}})
            log(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in history[-1].items()))
            score = val[selection]
            if config.select == "last" or (score > best or best_state is None):
                best, best_state = score, {k: v.clone() for k, v in trainable_state(model).items()}
                selected = epoch + 1
    train_time = time.perf_counter() - start
    model.load_state_dict(best_state, strict=False)
    test_scores = test_metrics = None
    if data.test is not None:
        test_scores = predict(model, data.test, task, **evaluation)
        if data.test.labels is not None:
            test_metrics = evaluate(test_scores, data.test, task)
    trainable, total_params = count_parameters(model)
    return RunResult(history, selected, selection, test_metrics, test_scores, trainable, total_params, train_time,
                     memory.peak_mb, str(device))
