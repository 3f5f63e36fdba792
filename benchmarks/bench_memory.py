"""Resident memory of one long bench process: does it grow with the number of runs?

Two grids run in this one process through the bench's own local executor (its caches shared by every run, as in
``medpeft bench``), and the process's resident set size (``VmRSS``) is read after every run:

- ``small``: 200 runs of a small grid (ViT-Tiny at 32 px, 1 epoch; linear, full, LoRA, EPT, VPT on the generated
  ``colon`` and ``endo`` tasks, 1/5-shot, samplings 1-2, seeds 0-4): the resident size after run 20 and after run
  200, and their difference (target: at most 150 MB);
- ``vits``: full fine-tuning of a ViT-S/16 at 112 px (random init; 10 runs) on PneumoniaMNIST (array sources, as
  the real study; validation capped at 10 images per class): the growth per run after the first.

Writes ``OUT/memory.json`` (every reading) and ``OUT/memory.md``. Run from the repository root, on an otherwise
quiet machine: ``python benchmarks/bench_memory.py --out benchmarks/memory`` (about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch

from medpeft.bench import BenchConfig, LocalExecutor, run_bench
from medpeft.data import make_demo_data

XRAYS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pneumoniamnist.npz"


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


class Measured(LocalExecutor):
    """The local executor, reading the resident size after every run."""

    def __init__(self):
        super().__init__(cpus_per_run=torch.get_num_threads())
        self.readings: list[float] = []

    def next(self):
        outcome = super().next()
        self.readings.append(resident_mb())
        return outcome


def grid(
    data_root: Path,
    backbone: str,
    img_size: int,
    methods: list[str],
    tasks: list[str],
    shots: list[int],
    exps: list[int],
    seeds: list[int],
    **extra,
) -> BenchConfig:
    return BenchConfig.from_dict(
        {
            **extra,
            "methods": [{"method": m, "options": {"prompt_length": 5}} if m in ("ept", "vpt") else m for m in methods],
            "tasks": tasks,
            "data_root": str(data_root),
            "shots": shots,
            "exps": exps,
            "seeds": seeds,
            "backbone": backbone,
            "pretrained": False,
            "img_size": img_size,
            "calibrate": "temperature",
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        },
        "memory benchmark",
    )


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--seeds", default=5, show_default=True, help="Seeds of the small grid (40 runs each).")
@click.option("--vits-runs", default=10, show_default=True)
def main(out, seeds, vits_runs):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    make_demo_data(work / "data")
    report = {
        "machine": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "start_mb": resident_mb(),
    }
    started = time.perf_counter()
    small = Measured()
    run_bench(
        grid(
            work / "data",
            "vit_tiny_patch16_224",
            32,
            ["linear", "full", "lora", "ept", "vpt"],
            ["colon", "endo"],
            [1, 5],
            [1, 2],
            list(range(seeds)),
        ),
        work / "small",
        executor=small,
        progress=False,
    )
    r = small.readings
    report["small"] = {
        "runs": len(r),
        "readings_mb": r,
        "after_20_mb": r[19],
        "after_last_mb": r[-1],
        "difference_mb": r[-1] - r[19],
        "seconds": time.perf_counter() - started,
    }
    vits = Measured()
    run_bench(
        grid(
            XRAYS,
            "vit_small_patch16_224",
            112,
            ["full"],
            ["medmnist"],
            [1],
            [1],
            list(range(vits_runs)),
            val_per_class=10,
        ),
        work / "vits",
        executor=vits,
        progress=False,
    )
    v = vits.readings
    report["vits"] = {
        "runs": len(v),
        "readings_mb": v,
        "growth_per_run_mb": float(np.polyfit(range(1, len(v)), v[1:], 1)[0]),
    }
    (out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Resident memory of one bench process",
        "",
        f"{report['machine']}, torch {report['torch']}, {report['threads']} threads; "
        "`python benchmarks/bench_memory.py --out benchmarks/memory`.",
        "",
        "| grid | runs | after run 20 (MB) | after the last run (MB) | difference (MB) |",
        "|---|---:|---:|---:|---:|",
        f"| small (ViT-Ti 32 px, 5 methods) | {len(r)} | {r[19]:.0f} | {r[-1]:.0f} | {r[-1] - r[19]:+.0f} |",
        "",
        f"Full fine-tuning of ViT-S/16 at 112 px on PneumoniaMNIST, {len(v)} runs: resident after each run "
        + ", ".join(f"{x:.0f}" for x in v)
        + f" MB; growth {report['vits']['growth_per_run_mb']:+.1f} MB per run "
        "after the first (least squares).",
    ]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
