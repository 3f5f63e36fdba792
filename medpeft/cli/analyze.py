"""``medpeft analyze``: numbers, figures and a report for the runs of benches and run directories."""

from __future__ import annotations

from pathlib import Path

import click

from .options import Command


@click.command("analyze", cls=Command)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for analysis.json, the figures and report.md.",
)
@click.option("--class-index", type=int, help="Class shown in the PCA and t-SNE figures [the most frequent].")
@click.option(
    "--perplexity", type=float, default=30.0, show_default=True, help="t-SNE perplexity (capped at (points - 1) / 3)."
)
@click.option(
    "--max-points",
    type=int,
    default=200,
    show_default=True,
    help="Test images per t-SNE panel (a fixed random subset).",
)
@click.option("--n-splits", type=int, default=5, show_default=True, help="Folds of the separability cross-validation.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, auto, ...")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--candidates", is_flag=True, help="Every search candidate of a bench, not only the selected runs.")
def command(paths, out, class_index, perplexity, max_points, n_splits, device, batch_size, candidates):
    """Features, scatter numbers and figures of trained runs (bench or run directories) vs the frozen backbone."""
    from ..analysis import analyze

    analysis = analyze(
        paths,
        out,
        class_index=class_index,
        perplexity=perplexity,
        max_points=max_points,
        n_splits=n_splits,
        device=device,
        batch_size=batch_size,
        candidates=candidates,
    )
    click.echo(
        f"analysed {len(analysis['runs'])} models in {analysis['timing_s']['total']:.0f} s; "
        f"wrote {len(analysis['figures'])} figures, {Path(out) / 'analysis.json'} and {Path(out) / 'report.md'}"
    )
