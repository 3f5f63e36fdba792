"""``python -m medpeft.speed``: the command (:mod:`medpeft.cli.speed`), and the child-process entry points
(``--child JSON`` measures one entry's memory, ``--timing-child JSON`` times entries; each prints one result line)."""

from __future__ import annotations

import json
import sys

from .machine import RESULT_PREFIX
from .memory import measure_memory
from .runner import time_methods


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--timing-child"]):
        payload = json.loads(argv[1])
        result = measure_memory(**payload) if argv[0] == "--child" else time_methods(payload.pop("labels"), **payload)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    from ..cli.speed import main as command_main

    command_main(argv)


if __name__ == "__main__":
    main()
