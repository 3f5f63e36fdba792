"""``python -m medpeft.cli``: the ``medpeft`` command."""

from . import main

main()
