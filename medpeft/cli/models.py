"""``medpeft models``: the named medical foundation models (:mod:`medpeft.foundation_models`)."""

from __future__ import annotations

import click

from .options import Command


@click.command(cls=Command)
def models():
    """List the named medical foundation models and how to load each."""
    from ..foundation_models import MODELS, describe

    for model in MODELS:
        click.echo("\n".join(describe(model)))
