"""What the analysis reads from a model: test features, probabilities and the method's per-token maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ResizedImageCache, Samples, TaskSpec, eval_dataset
from ..evaluate import probabilities
from ..model import PeftClassifier


@dataclass
class ForwardResult:
    """A model's outputs on a sample set: ``features`` (n, D) read by the head, ``probabilities`` (n, C) or None,
    and ``maps``: the method's per-token maps (:meth:`~medpeft.methods.Method.token_maps`, e.g. EPT's patch-wise
    scaling), {block index: (N,) mean over the images}, under ``maps_name`` (None without maps)."""

    features: np.ndarray
    probabilities: np.ndarray | None
    maps: dict[int, np.ndarray]
    maps_name: str | None = None
    maps_title: str | None = None
    prompt_mass: dict[int, MassShare] = field(default_factory=dict)


@dataclass
class MassShare:
    """The share of attention-row softmax mass a block's prompt takes (:meth:`~medpeft.methods.Method.prompt_mass`):
    its mean and range over images, heads and query tokens."""

    mean: float
    min: float
    max: float


class _MassStats:
    """Running mean, min and max of a block's prompt mass over batches."""

    def __init__(self):
        self.total, self.count, self.low, self.high = 0.0, 0, float("inf"), float("-inf")

    def add(self, share: torch.Tensor) -> None:
        share = share.double()
        self.total += float(share.sum())
        self.count += share.numel()
        self.low, self.high = min(self.low, float(share.min())), max(self.high, float(share.max()))

    def result(self) -> MassShare:
        return MassShare(self.total / self.count, self.low, self.high)


@torch.no_grad()
def forward_pass(
    model: PeftClassifier,
    samples: Samples,
    task: TaskSpec | None,
    img_size: int,
    *,
    batch_size: int = 32,
    cache: ResizedImageCache | None = None,
    device: torch.device | str = "cpu",
    head: bool = True,
    maps: bool = True,
    mass: bool = False,
) -> ForwardResult:
    """One eval-mode float32 pass over ``samples`` (square-resized as at test time).

    Features are ``model.forward_features``, the feature the head reads (ViT: the CLS token after the final norm, or
    the model's GAP / attention pool; Swin: the mean of the final-norm tokens; EVA, BEiT: their ``global_pool``, e.g.
    the mean patch token after ``fc_norm``); probabilities are the head's
    (sigmoid or softmax, as :func:`medpeft.train.predict`) when ``head``; with ``maps``, forward pre-hooks on the
    modules the method names feed their inputs to its map functions; with ``mass``, likewise for its prompt mass
    (:meth:`~medpeft.methods.Method.prompt_mass`, summarised as :class:`MassShare` per block).
    """
    device = torch.device(device)
    model.eval().to(device)
    token_maps = model.method.token_maps(model) if maps else None
    probes = token_maps.probes if token_maps else {}
    sums: dict[int, torch.Tensor] = {}
    handles = []
    for i, (module, fn) in probes.items():

        def hook(module, args, i=i, fn=fn):
            s = fn(args[0]).float().sum(dim=0)  # (B, N) -> (N,)
            sums[i] = s if i not in sums else sums[i] + s

        handles.append(module.register_forward_pre_hook(hook))
    mass_probes = model.method.prompt_mass(model) if mass else {}
    shares = {i: _MassStats() for i in mass_probes}
    for i, (module, fn) in mass_probes.items():
        handles.append(module.register_forward_pre_hook(lambda module, args, i=i, fn=fn: shares[i].add(fn(args[0]))))
    features, probs = [], []
    loader = DataLoader(
        eval_dataset(samples, img_size, cache, task=task, mean=model.preprocessing.mean, std=model.preprocessing.std),
        batch_size=batch_size,
    )
    try:
        for images, _, _ in loader:
            feats = model.forward_features(images.to(device)).float()
            features.append(feats.cpu())
            if head:
                probs.append(probabilities(model.head(feats).float(), task).cpu())
    finally:
        for handle in handles:
            handle.remove()
    n = max(len(samples), 1)
    return ForwardResult(
        torch.cat(features).numpy().astype(np.float64) if features else np.zeros((0, 0)),
        torch.cat(probs).numpy().astype(np.float64) if probs else None,
        {i: (s / n).cpu().numpy() for i, s in sorted(sums.items())},
        token_maps.name if token_maps else None,
        token_maps.title if token_maps else None,
        {i: stats.result() for i, stats in sorted(shares.items()) if stats.count},
    )


def prompt_mass(
    model: PeftClassifier,
    samples: Samples,
    task: TaskSpec | None,
    img_size: int,
    *,
    batch_size: int = 32,
    cache: ResizedImageCache | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, MassShare]:
    """Per prompted block, the share of attention-row softmax mass the prompt takes on ``samples`` (EPT's concat
    ways: 1 − s_j, mean and range over images, heads and query tokens); empty for a method without prompt mass."""
    return forward_pass(
        model,
        samples,
        task,
        img_size,
        batch_size=batch_size,
        cache=cache,
        device=device,
        head=False,
        maps=False,
        mass=True,
    ).prompt_mass


def extract_features(
    model: PeftClassifier,
    samples: Samples,
    task: TaskSpec | None,
    img_size: int,
    *,
    batch_size: int = 32,
    cache: ResizedImageCache | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The features the head reads (``model.forward_features``: see :func:`forward_pass`), (n, D) float64.

    Eval mode, no gradients, float32, images square-resized to ``img_size`` as at test time.
    """
    return forward_pass(
        model, samples, task, img_size, batch_size=batch_size, cache=cache, device=device, head=False, maps=False
    ).features


def token_maps(
    model: PeftClassifier,
    samples: Samples,
    task: TaskSpec | None,
    img_size: int,
    *,
    batch_size: int = 32,
    cache: ResizedImageCache | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, np.ndarray]:
    """The method's per-token maps per block, averaged over ``samples`` (EPT: the patch-wise scaling
    s_j = Z_j / (Z_j + Σ_l exp P_jl) per query token, CLS first, then the patches in row-major grid order, mean over
    heads; a Swin stage's map on the patch grid); empty for a method without maps."""
    return forward_pass(
        model, samples, task, img_size, batch_size=batch_size, cache=cache, device=device, head=False, maps=True
    ).maps
