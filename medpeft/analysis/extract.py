"""What the analysis reads: the runs named by bench or run directories, and per run its test features,
probabilities and (EPT) patch-wise scaling factors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..attention import CONCAT_WAYS, EmbeddedPromptAttention
from ..bench import method_label, read_runs, run_key
from ..data import ResizedImageCache, Samples, TaskSpec, eval_dataset
from ..errors import UserError
from ..experiment import read_run_config
from ..model import PeftClassifier
from ..train import probabilities

_EXPECTED = "a bench directory (with runs.jsonl) or a run directory (with config.json)"


@dataclass
class RunRef:
    """One finished run to analyse: where it is and what it is (``label`` names its method in figures)."""

    name: str
    label: str
    method: str
    task: str
    shots: int
    exp: int
    seed: int
    run_dir: Path
    config: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The run's ``metrics.json`` (history, selection metric, test metrics), or None if absent."""
        try:
            return json.loads((self.run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return None


def collect_runs(paths) -> list[RunRef]:
    """The runs of every path: a bench directory gives all runs of its ``runs.jsonl``, a run directory itself.

    A run found twice (a bench and one of its run directories) is kept once, under its bench key and label.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError(f"no path given: expected {_EXPECTED}")
    refs: dict[Path, RunRef] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such directory; expected {_EXPECTED}")
        if not path.is_dir():
            raise UserError(f"{path} is a file; expected {_EXPECTED}")
        if (path / "runs.jsonl").is_file():
            runs = read_runs(path)
            if not runs:
                raise UserError(f"{path}/runs.jsonl lists no finished run")
            for r in runs:
                run_dir = (path / r["run_dir"]).resolve()
                config = read_run_config(run_dir)
                refs[run_dir] = RunRef(r["key"], r["label"], r["method"], r["task"], int(r["shots"]), int(r["exp"]),
                                       int(r["seed"]), run_dir, config)
        elif (path / "config.json").is_file():
            run_dir = path.resolve()
            if run_dir in refs:
                continue
            config = read_run_config(run_dir)
            try:
                label = method_label(config["method"], config.get("options", {}))
                seed = int(config["train"]["seed"])
                name = run_key(label, config["task"], config["shots"], config["exp"], seed)
                refs[run_dir] = RunRef(name, label, config["method"], config["task"], int(config["shots"]),
                                       int(config["exp"]), seed, run_dir, config)
            except (KeyError, TypeError) as err:
                raise UserError(f"{path}/config.json lacks {err}: not a medpeft run directory") from None
        else:
            raise UserError(f"{path} has neither runs.jsonl nor config.json; expected {_EXPECTED}")
    names: dict[str, int] = {}
    for ref in refs.values():  # two run directories with the same spec: keep both, told apart
        names[ref.name] = names.get(ref.name, 0) + 1
        if names[ref.name] > 1:
            ref.name = f"{ref.name}#{names[ref.name]}"
    return list(refs.values())


@dataclass
class ForwardResult:
    """A model's outputs on a sample set: ``features`` (n, D) read by the head, ``probabilities`` (n, C) or None,
    and ``scaling``: {EPT concat-way block index: patch-wise scaling s_j averaged over images and heads (N,)}."""

    features: np.ndarray
    probabilities: np.ndarray | None
    scaling: dict[int, np.ndarray]


def _prompted_attentions(model: PeftClassifier) -> dict[int, EmbeddedPromptAttention]:
    return {i: block.attn for i, block in enumerate(model.backbone.blocks)
            if isinstance(block.attn, EmbeddedPromptAttention) and block.attn.way in CONCAT_WAYS}


@torch.no_grad()
def forward_pass(model: PeftClassifier, samples: Samples, task: TaskSpec | None, img_size: int, *,
                 batch_size: int = 32, cache: ResizedImageCache | None = None, device: torch.device | str = "cpu",
                 head: bool = True, scaling: bool = True) -> ForwardResult:
    """One eval-mode float32 pass over ``samples`` (square-resized as at test time).

    Features are ``model.forward_features`` (the CLS token after the final norm); probabilities are the head's
    (sigmoid or softmax, as :func:`medpeft.train.predict`) when ``head``; with ``scaling``, a forward pre-hook on
    every EPT attention of a concat way feeds its input to ``attn.patch_scaling`` (s_j = Z_j / (Z_j + Σ_l exp P_jl)).
    """
    device = torch.device(device)
    model.eval().to(device)
    attentions = _prompted_attentions(model) if scaling else {}
    sums = {i: None for i in attentions}
    handles = []
    for i, attn in attentions.items():
        def hook(module, args, i=i):
            s = module.patch_scaling(args[0]).float().mean(dim=1).sum(dim=0)  # (B, H, N) -> (N,), summed over B
            sums[i] = s if sums[i] is None else sums[i] + s
        handles.append(attn.register_forward_pre_hook(hook))
    features, probs = [], []
    loader = DataLoader(eval_dataset(samples, img_size, cache, task=task), batch_size=batch_size)
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
        {i: (s / n).cpu().numpy() for i, s in sums.items() if s is not None},
    )


def extract_features(model: PeftClassifier, samples: Samples, task: TaskSpec | None, img_size: int, *,
                     batch_size: int = 32, cache: ResizedImageCache | None = None,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """The features the head reads (``model.forward_features``: CLS token after the final norm), (n, D) float64.

    Eval mode, no gradients, float32, images square-resized to ``img_size`` as at test time.
    """
    return forward_pass(model, samples, task, img_size, batch_size=batch_size, cache=cache, device=device,
                        head=False, scaling=False).features


def patch_scaling(model: PeftClassifier, samples: Samples, task: TaskSpec | None, img_size: int, *,
                  batch_size: int = 32, cache: ResizedImageCache | None = None,
                  device: torch.device | str = "cpu") -> dict[int, np.ndarray]:
    """EPT's patch-wise scaling per prompted block: {block index: s (N,)} averaged over ``samples`` and heads.

    s_j = Z_j / (Z_j + Σ_l exp P_jl) for query token j (CLS first, then the patches in row-major grid order);
    empty for a model without EPT attention of a concat way.
    """
    return forward_pass(model, samples, task, img_size, batch_size=batch_size, cache=cache, device=device,
                        head=False, scaling=True).scaling
