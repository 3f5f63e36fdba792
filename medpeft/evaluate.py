"""Evaluation: probabilities for a list of images, and the frozen-feature cache that makes it cheap.

A few-shot run evaluates a validation list that is 5-100× its training list every epoch, so evaluation dominates
its cost. Where a method leaves a prefix of the backbone frozen (linear and mlp: all of it; partial-k: all but the
last k blocks; :meth:`~medpeft.methods.Method.frozen_stages`), that prefix's output for an evaluation list is
computed once, kept in a :class:`FeatureCache` (memory, and with a folder on disk, shared by the runs of a bench),
and only the trained rest runs at each evaluation. The evaluation transform is deterministic and the cached
prefix runs on exactly the batches the full model would, so the probabilities are bit-identical to the uncached
path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch
from cachetools import LRUCache
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics
from .data import ResizedImageCache, Samples, TaskSpec, eval_dataset
from .data.cache import remember
from .families import family_of
from .model import PeftClassifier


def probabilities(logits: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Sigmoid for multi-label tasks, softmax otherwise (what the submission files hold)."""
    return logits.sigmoid() if task.multilabel else logits.softmax(dim=-1)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled`` (training enables it on GPU only: ``config.bf16`` and CUDA)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def evaluate(scores: np.ndarray, samples: Samples, task: TaskSpec) -> dict[str, float]:
    """The task's metrics of ``scores`` against the labels of ``samples``."""
    return metrics.task_metrics(scores, samples.labels, task.multilabel)


class FeatureCache:
    """Outputs of a model's frozen prefix for whole evaluation lists, by (prefix weights, list, settings).

    The key holds a fingerprint of every tensor of the prefix (so other weights never hit), the number of frozen
    stages, the image size, the normalisation (mean, std), batch size, device type and autocast, and the list's
    images (file path, modification time and size, or the bytes of an array source). In memory at most ``memory_mb``
    of entries are kept (least recently used out first); with ``directory`` each entry is also one ``.npy`` file
    there, read back memory-mapped by any process and run.
    """

    def __init__(self, directory: str | Path | None = None, memory_mb: float = 1024):
        self.directory = None if directory is None else Path(directory)
        self._memory = LRUCache(maxsize=int(memory_mb * 2**20), getsizeof=lambda entry: entry.nbytes)
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, key: str, compute) -> np.ndarray:
        """The entry ``key``, computed with ``compute()`` (an (n, ...) float32 array) when absent."""
        if key in self._memory:
            return self._memory[key]
        file = None if self.directory is None else self.directory / f"{key}.npy"
        if file is not None and file.is_file():
            try:
                return remember(self._memory, key, np.load(file, mmap_mode="r"))
            except (OSError, ValueError):  # damaged: compute again
                pass
        value = compute()
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, value)
            os.replace(tmp, file)
            value = np.load(file, mmap_mode="r")
        return remember(self._memory, key, value)

    def key(
        self,
        model: PeftClassifier,
        stages: int,
        samples: Samples,
        *,
        img_size: int,
        batch_size: int,
        device: torch.device,
        bf16: bool,
    ) -> str:
        h = hashlib.sha256()
        h.update(self._prefix_fingerprint(model, stages).encode())
        h.update(
            repr(
                (
                    stages,
                    img_size,
                    batch_size,
                    device.type,
                    bf16,
                    torch.__version__,
                    model.preprocessing.mean,
                    model.preprocessing.std,
                    *([model.config.head] if model.config.head else []),  # a dense head reads the patch map
                )
            ).encode()
        )
        for source in samples.sources:
            if isinstance(source, np.ndarray):
                h.update(repr((source.shape, str(source.dtype))).encode())
                h.update(np.ascontiguousarray(source).tobytes())
            else:
                stat = os.stat(source)
                h.update(f"{os.path.abspath(source)}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
        return h.hexdigest()[:40]

    def _prefix_fingerprint(self, model: PeftClassifier, stages: int) -> str:
        """A digest of every tensor the prefix computes with (once per model and depth: the prefix is frozen)."""
        known = self._fingerprints.setdefault(model, {})
        if stages not in known:
            h = hashlib.sha256()
            for name, tensor in prefix_state(model, stages):
                h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            known[stages] = h.hexdigest()
        return known[stages]


def prefix_state(model: PeftClassifier, stages: int):
    """(name, tensor) of everything the first ``stages`` stages of the backbone compute with."""
    family = family_of(model.backbone)
    for name, tensor in [*model.backbone.named_parameters(), *model.backbone.named_buffers()]:
        if family.tensor_stage(name) < stages:
            yield name, tensor


def forward_prefix(model: PeftClassifier, images: torch.Tensor, stages: int) -> torch.Tensor:
    """The first ``stages`` stages: the tokens after that many blocks, or (``stages`` > depth) the pooled feature."""
    family = family_of(model.backbone)
    if stages > family.depth:
        return model.forward_features(images)
    x = family.embed(images)
    for i in range(stages):
        x = family.run_block(i, x)
    return x


def forward_suffix(model: PeftClassifier, x: torch.Tensor, stages: int) -> torch.Tensor:
    """The rest of the model after :func:`forward_prefix`: logits."""
    family = family_of(model.backbone)
    if stages <= family.depth:
        for i in range(stages, family.depth):
            x = family.run_block(i, x)
        x = model.readout(x)
    return model.head(x)


def predict(model: PeftClassifier, samples: Samples, task: TaskSpec, **kwargs) -> np.ndarray:
    """Probabilities (n, C) float64 for ``samples`` (:func:`scores_of` :func:`predict_logits`; same arguments)."""
    return scores_of(predict_logits(model, samples, task, **kwargs), task)


def scores_of(logits: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Probabilities of ``logits`` in float64: saturated float32 probabilities (1.0, or 0.5 under a large
    temperature) would tie distinct scores and change rankings."""
    return probabilities(torch.from_numpy(np.asarray(logits, dtype=np.float64)), task).numpy()


@torch.no_grad()
def predict_logits(
    model: PeftClassifier,
    samples: Samples,
    task: TaskSpec,
    *,
    img_size: int,
    batch_size: int = 32,
    cache: ResizedImageCache | None = None,
    features: FeatureCache | None = None,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> np.ndarray:
    """Logits (n, C) float32 for ``samples`` (a dense head: (n, C, S, S)), square-resized as at test time (bfloat16
    on GPU with ``bf16``).

    With ``features``, a frozen prefix of the model (:meth:`~medpeft.methods.Method.frozen_stages`) runs once per
    list and is reused: the same logits, bit for bit.
    """
    device = torch.device(device)
    model.eval()
    if not len(samples):
        return np.zeros((0, task.num_classes), dtype=np.float32)
    low = bf16 and device.type == "cuda"
    loader = DataLoader(
        eval_dataset(samples, img_size, cache, task=task, mean=model.preprocessing.mean, std=model.preprocessing.std),
        batch_size=batch_size,
        num_workers=num_workers,
        generator=torch.Generator(),
    )  # never draws from training's stream
    stages = model.method.frozen_stages(model.backbone) if features is not None else 0
    bar = dict(desc=desc, leave=False, disable=not progress or None)
    out = []
    if stages:

        def compute():
            with autocast(device, low):
                return np.concatenate(
                    [
                        forward_prefix(model, images.to(device), stages).float().cpu().numpy()
                        for images, _, _ in tqdm(loader, **bar)
                    ]
                )

        key = features.key(model, stages, samples, img_size=img_size, batch_size=batch_size, device=device, bf16=low)
        prefix = features.get(key, compute)
        for start in range(0, len(prefix), batch_size):
            x = torch.from_numpy(np.array(prefix[start : start + batch_size])).to(device)
            with autocast(device, low):
                out.append(forward_suffix(model, x, stages).float().cpu())
    else:
        for images, _, _ in tqdm(loader, **bar):
            with autocast(device, low):
                out.append(model(images.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out).numpy()
