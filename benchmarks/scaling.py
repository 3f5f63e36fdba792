"""Scaling of a fixed grid over Ray workers: wall time and runs/hour at 1, 2 and 4 worker processes on this machine
(a local Ray with that many CPUs, one CPU and one torch thread per run), next to the in-process executor.

More workers than cores oversubscribe the machine: on 2 cores, 4 workers show what that costs. ``--gpu``: one GPU
shared by 1, 2, 4 and 8 runs at once (``gpus_per_run`` = 1/n), to choose ``--gpus-per-run``. Every point runs the
grid into a fresh folder (nothing is reused from another point).

Run from the repository root: ``python benchmarks/scaling.py --out benchmarks/scaling`` (about 5 minutes on 2
free CPU cores); on a CUDA machine
``python benchmarks/scaling.py --gpu --runs 48 --img-size 224 --out benchmarks/scaling``. ``--runs``/``--epochs``/
``--img-size`` change the grid.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import click
import torch

from medpeft.bench import BenchConfig, LocalExecutor, run_bench
from medpeft.bench.ray_executor import RayExecutor
from medpeft.data import make_demo_data
from medpeft.speed.machine import busy_now, cpu_model

METHODS = ["linear", "lora", {"method": "ept", "options": {"prompt_length": 10}}]


def grid(data_root: Path, runs: int, epochs: int, img_size: int) -> BenchConfig:
    """``runs`` runs (a multiple of 6): linear, LoRA and EPT on the demo's colon task, 5-shot, its experiments 1 and 2
    (the demo data has two samplings) × seeds 0…"""
    return BenchConfig.from_dict(
        {
            "methods": METHODS,
            "tasks": ["colon"],
            "data_root": str(data_root),
            "shots": [5],
            "exps": [1, 2],
            "seeds": list(range(max(1, runs // (2 * len(METHODS))))),
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": img_size,
            "train": {"epochs": epochs, "batch_size": 4},
        },
        "scaling grid",
    )


def timed(config: BenchConfig, out: Path, executor, ray_resources: dict | None) -> float:
    """Wall seconds of the whole grid into ``out`` (a local Ray with ``ray_resources`` started first, untimed)."""
    import ray

    if ray_resources is not None:
        ray.init(**ray_resources, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        start = time.perf_counter()
        run_bench(config, out, executor=executor, progress=False)
        return time.perf_counter() - start
    finally:
        if ray.is_initialized():
            ray.shutdown()


def markdown(facts: dict, rows: list[dict]) -> str:
    setup = (
        f"{facts['runs']} runs (linear, LoRA, EPT; ViT-Tiny at {facts['img_size']} px, {facts['epochs']} "
        f"epochs, batch 4) on {facts['cpu_model']}, {facts['cores']} cores; {facts['other_cores_busy']} "
        "cores busy with other work at the start. Wall time includes starting each Ray worker process "
        "(importing torch), as a real bench pays it."
    )
    lines = [
        "# Scaling: one grid over Ray workers",
        "",
        setup,
        "",
        "| executor | workers | runs per GPU | wall (s) | runs/hour | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    base = rows[0]["wall_s"]
    for row in rows:
        lines.append(
            f"| {row['executor']} | {row['workers']} | {row.get('runs_per_gpu', '')} | {row['wall_s']:.1f} "
            f"| {row['runs_per_hour']:.0f} | {base / row['wall_s']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--runs", default=12, show_default=True, help="Grid size (rounded down to a multiple of 6).")
@click.option("--epochs", default=4, show_default=True)
@click.option("--img-size", default=64, show_default=True)
@click.option("--workers", default="1,2,4", show_default=True, help="Ray worker processes to try.")
@click.option("--gpu", is_flag=True, help="One GPU shared by 1, 2, 4, 8 runs at once, instead of CPU workers.")
@click.option("--out", type=click.Path(file_okay=False), required=True)
def main(runs, epochs, img_size, workers, gpu, out):
    if gpu and not torch.cuda.is_available():
        raise click.UsageError("--gpu needs a CUDA GPU, and torch sees none on this machine")
    if runs < 2 * len(METHODS):
        raise click.UsageError(f"--runs must be at least {2 * len(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    # a short folder: Ray's socket paths must fit
    with tempfile.TemporaryDirectory(prefix="s", dir="/tmp", ignore_cleanup_errors=True) as tmp:
        os.environ.setdefault("RAY_TMPDIR", tmp)
        make_demo_data(Path(tmp) / "data")
        config = grid(Path(tmp) / "data", runs, epochs, img_size)
        n_runs = sum(1 for _ in config.specs())
        busy = busy_now()
        facts = {
            "cpu_model": cpu_model(),
            "cores": cores,
            "other_cores_busy": busy and round(busy, 2),
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
            "runs": n_runs,
            "epochs": epochs,
            "img_size": img_size,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        points = [("local", 1, None, LocalExecutor(cpus_per_run=1), None)]
        if gpu:
            points += [
                (
                    "ray",
                    n,
                    n,
                    RayExecutor(cpus_per_run=max(1, cores // n), gpus_per_run=1 / n),
                    {"num_cpus": cores, "num_gpus": 1},
                )
                for n in (1, 2, 4, 8)
            ]
        else:
            points += [
                ("ray", n, None, RayExecutor(cpus_per_run=1), {"num_cpus": n})
                for n in (int(w) for w in workers.split(","))
            ]
        rows = []
        for i, (name, n, per_gpu, executor, resources) in enumerate(points):
            wall = timed(config, Path(tmp) / f"bench{i}", executor, resources)
            rows.append(
                {
                    "executor": name,
                    "workers": n,
                    **({"runs_per_gpu": per_gpu} if per_gpu else {}),
                    "wall_s": round(wall, 2),
                    "runs_per_hour": round(3600 * n_runs / wall, 1),
                }
            )
            click.echo(f"{name} × {n}: {wall:.1f} s, {3600 * n_runs / wall:.0f} runs/hour")
            shutil.rmtree(Path(tmp) / f"bench{i}", ignore_errors=True)
    name = "scaling-gpu" if gpu else "scaling"
    (out / f"{name}.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(facts, rows))
    click.echo(f"wrote {out / name}.md and .json")


if __name__ == "__main__":
    main()
