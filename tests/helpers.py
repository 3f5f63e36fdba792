"""Small helpers the tests share."""

import pytest

from medpeft.cli import main


def run_cli(args, capsys):
    """``medpeft ARGS`` in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err
