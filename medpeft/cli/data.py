"""``medpeft splits``: new MedFMC K-shot split files."""

from __future__ import annotations

from pathlib import Path

import click

from ..data import MEDFMC_TASKS
from .options import Command, int_list


@click.command(cls=Command)
@click.option("--task", required=True, type=click.Choice(MEDFMC_TASKS))
@click.option(
    "--data-root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="MedFMC root: reads <root>/<task>/trainval.txt.",
)
@click.option("--shots", default="1,5,10", show_default=True)
@click.option("--exps", default="1-5", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing split files.")
def splits(task, data_root, shots, exps, seed, overwrite):
    """Write new MedFMC K-shot splits (grouping rules of the original; val disjoint from train)."""
    from ..data import write_medfmc_splits

    written = write_medfmc_splits(data_root, task, int_list(shots), int_list(exps), seed=seed, overwrite=overwrite)
    click.echo(f"wrote {len(written) if written else 'the'} split files in {Path(data_root) / task}")
