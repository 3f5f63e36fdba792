"""Added peak memory of a few train steps, measured where nothing else counts."""

from __future__ import annotations

import gc
import subprocess
from typing import Any

import torch

from ..backbones import create_backbone
from ..memory import PeakMemory
from ..train import resolve_device
from .entries import build_entry
from .machine import run_child, set_threads
from .runner import StepRunner


def measure_memory(
    label: str,
    *,
    backbone: str,
    img_size: int,
    batch: int,
    device: str,
    bf16: bool,
    threads: int,
    seed: int = 0,
    steps: int = 3,
) -> dict[str, Any]:
    """Added peak memory of ``steps`` train steps of ``label`` at ``batch``, in this process (call it in a fresh one).

    The model is built and a batch-1 no-grad forward initialises the kernels; then :class:`~medpeft.memory.PeakMemory`
    measures the steps: on CPU the growth of the process's resident high-water mark (``VmHWM``, reset first), on
    CUDA of ``torch.cuda.max_memory_allocated``.
    """
    set_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    template = create_backbone(backbone, pretrained=False, img_size=img_size)
    runner = StepRunner(build_entry(label, template, img_size=img_size), dev, bf16, batch, img_size, seed)
    with torch.no_grad():
        runner.model.eval()
        runner.model(runner.images[:1])
    gc.collect()
    with PeakMemory(dev) as memory:
        for _ in range(steps):
            runner.train_step()
    if memory.added_mb is None:
        return {"added_peak_mib": None, "memory_how": "unavailable (the high-water mark cannot be reset here)"}
    how = "cuda max_memory_allocated" if dev.type == "cuda" else "VmHWM growth after reset"
    return {
        "added_peak_mib": memory.added_mb,
        "base_mib": memory.base_mb,
        "peak_mib": memory.peak_mb,
        "memory_how": how,
    }


def measure_memory_isolated(label: str, **kwargs) -> dict[str, Any]:
    """:func:`measure_memory` where nothing else counts: on CUDA in this process (the allocator's statistics are
    exact), on CPU in a fresh Python process (its own high-water mark)."""
    if resolve_device(kwargs["device"]).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        return measure_memory(label, **kwargs)
    result = run_child("child", {"label": label, **kwargs}, stderr=subprocess.PIPE)
    if "_failed" in result:
        tail = result["_stderr"].strip().splitlines()[-1:] or ["no output"]
        return {"added_peak_mib": None, "memory_how": f"child failed (exit {result['_failed']}): {tail[0]}"}
    return result
