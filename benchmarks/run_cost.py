"""One run's end-to-end wall time, split into train / validation / test, on a MedFMC-shaped list.

The official ChestDR 1-shot experiment 1 lists (19 train, 960 val, 1,161 test: ``tests/data/chest``) with a
placeholder image for every name, and the paper's recipe (20 epochs, batch 4, validation every epoch, the test list
once). Three runs in one process, one after the other: ``linear`` evaluated through the full model every time
(``--no-feature-cache``, as before the cache), ``linear`` with the frozen-feature cache, and ``ept`` (whose prompts
sit in every block, so nothing is cached). The two linear runs must give identical records.

Run from the repository root: ``python benchmarks/run_cost.py --out benchmarks/run_cost`` (about 10 minutes on 2
CPU cores with ViT-Tiny at 224 px; ``--backbone``/``--img-size``/``--epochs`` change the shape).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from medpeft.data import read_names
from medpeft.evaluate import FeatureCache
from medpeft.experiment import run_experiment
from medpeft.record import RunSpec

LISTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "chest"
FILES = ("chest_1-shot_train_exp1.txt", "chest_1-shot_val_exp1.txt", "test_WithLabel.txt")


def chest_tree(root: Path, size: int) -> Path:
    """The official chest 1-shot lists with a random grey PNG of ``size`` px for every image they name."""
    folder = root / "chest"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in FILES:
        shutil.copy(LISTS / name, folder / name)
        for image in read_names(folder / name, "chest"):
            path = folder / "images" / image
            if not path.exists():
                Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(path)
    return root


@click.command()
@click.option("--backbone", default="vit_tiny_patch16_224", show_default=True)
@click.option("--img-size", default=224, show_default=True)
@click.option("--source-size", default=256, show_default=True, help="Side of the placeholder images.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
def main(backbone, img_size, source_size, epochs, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = chest_tree(Path(tmp) / "data", source_size)
        for label, method, features in (
            ("linear, no cache", "linear", None),
            ("linear, feature cache", "linear", FeatureCache()),
            ("ept", "ept", FeatureCache()),
        ):
            spec = RunSpec(
                method=method,
                task="chest",
                data_root=str(root),
                shots=1,
                exp=1,
                backbone=backbone,
                pretrained=False,
                img_size=img_size,
                train={"epochs": epochs},
            )
            start = time.perf_counter()
            record = run_experiment(
                spec, Path(tmp) / label.replace(" ", "_").replace(",", ""), progress=True, features=features
            )
            rows[label] = {
                "wall_s": time.perf_counter() - start,
                "time_s": record.result.time_s,
                "history": record.result.history,
                "test": record.test,
            }
            click.echo(f"{label}: {rows[label]['wall_s']:.1f} s {record.result.time_s}", err=True)
    identical = (
        rows["linear, no cache"]["history"] == rows["linear, feature cache"]["history"]
        and rows["linear, no cache"]["test"] == rows["linear, feature cache"]["test"]
    )
    ratio_before = rows["linear, no cache"]["wall_s"] / rows["ept"]["wall_s"]
    ratio_after = rows["linear, feature cache"]["wall_s"] / rows["ept"]["wall_s"]
    report = {
        "backbone": backbone,
        "img_size": img_size,
        "epochs": epochs,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "runs": {k: {"wall_s": v["wall_s"], "time_s": v["time_s"], "test": v["test"]} for k, v in rows.items()},
        "linear_over_ept_before": ratio_before,
        "linear_over_ept_after": ratio_after,
        "identical_linear_records": identical,
    }
    (out / "run_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"ChestDR 1-shot exp1 shape (19 train, 960 val, 1,161 test placeholder images), `{backbone}` at "
        f"{img_size} px, random init, {epochs} epochs, batch 4, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}. Wall time per run (s):",
        "",
        "| run | train | val | test | end to end | × ept |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows.items():
        t = row["time_s"]
        lines.append(
            f"| {label} | {t['train']:.1f} | {t['val']:.1f} | {t['test']:.1f} | {row['wall_s']:.1f} | "
            f"{row['wall_s'] / rows['ept']['wall_s']:.3f} |"
        )
    lines += [
        "",
        f"- linear / ept end to end: {ratio_before:.3f} before, {ratio_after:.3f} with the feature cache "
        f"(target ≤ 0.35: **{'PASS' if ratio_after <= 0.35 else 'FAIL'}**)",
        f"- linear's records with and without the cache identical (history, selected epoch, test metrics): "
        f"**{identical}**",
        "",
    ]
    (out / "run_cost.md").write_text("\n".join(lines))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
