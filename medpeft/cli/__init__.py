"""The ``medpeft`` command: every command, its flags, and how errors and notices reach the terminal.

click is imported here and nowhere else in the package. Each command maps its flags to the parameters of a library
function; a library error naming a parameter (:class:`~medpeft.errors.ParameterError`) is shown naming the flag
(:class:`.options.Command`).
Commands: :mod:`.train` (methods, train, predict), :mod:`.bench`, :mod:`.analyze`, :mod:`.demo` (demo, floors),
:mod:`.data` (splits), :mod:`.export` (export, weights), :mod:`.models`, :mod:`.speed`; shared options: :mod:`.options`.
"""

from __future__ import annotations

import sys
import warnings

import click

from ..errors import Notice, UserError
from .analyze import command as analyze_command
from .bench import command as bench_command
from .data import splits
from .demo import demo, floors
from .export import export, weights
from .models import models
from .speed import command as speed_command
from .train import methods, posthoc, predict, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="medpeft")
def cli():
    """Parameter-efficient fine-tuning of ViTs for few-shot medical image classification."""


for _command in (
    methods,
    train,
    posthoc,
    predict,
    demo,
    splits,
    analyze_command,
    bench_command,
    floors,
    export,
    speed_command,
    weights,
    models,
):
    cli.add_command(_command)


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, Notice):
        click.echo(f"medpeft: warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback; notices are
    one line too (only while the command runs: the process's warning display is restored after)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _run(argv)


def _run(argv: list[str]) -> None:
    try:
        cli.main(args=argv, prog_name="medpeft", standalone_mode=False)
    except UserError as err:
        click.echo(f"medpeft: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("medpeft: interrupted (finished runs are kept)", err=True)
        sys.exit(130)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "medpeft"
        click.echo(f"{where}: error: {err.format_message()} (see {where} --help)".replace("\n", " "), err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
