"""``medpeft demo``: the whole pipeline offline, in about a minute on two CPU cores.

A small built-in dataset (multi-label ``endo`` and binary ``colon`` in the MedFMC layout, generated
deterministically) and the bench over every method of the paper plus SSF and a ``peft`` LoRA, on a tiny
randomly initialised ViT (no download). The numbers show that everything runs end to end; they are not the
paper's, which need pretrained weights and the real data.
"""

from __future__ import annotations

from pathlib import Path

from .bench import BenchConfig, run_bench
from .data import make_demo_data

DEMO_METHODS = ["linear", "full", "partial", "mlp", "bitfit", "lora", "adapter", "vp", "vpt", "ept", "ssf",
                "peft:lora"]
DEMO_OPTIONS = {"vp": {"prompt_size": 4}, "adapter": {"bottleneck": 16}}


def demo_config(data_root: str | Path, epochs: int = 4) -> BenchConfig:
    """The demo's bench: 5-shot experiment 1 of both tasks, ViT-Tiny at 64 px, paper recipe with a higher lr."""
    return BenchConfig.from_dict({
        "methods": [{"method": m, "options": DEMO_OPTIONS.get(m, {})} for m in DEMO_METHODS],
        "tasks": ["endo", "colon"], "data_root": str(Path(data_root).resolve()), "shots": [5], "exps": [1],
        "seeds": [0], "backbone": "vit_tiny_patch16_224", "pretrained": False, "img_size": 64,
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01},
    }, "demo")


def run_demo(out: str | Path, epochs: int = 4, progress: bool = True) -> str:
    """Generate the demo data under ``out/data``, bench into ``out``; returns the summary Markdown."""
    out = Path(out)
    make_demo_data(out / "data")
    run_bench(demo_config(out / "data", epochs), out, progress=progress)
    return (out / "summary.md").read_text()
