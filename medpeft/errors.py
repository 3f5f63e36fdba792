"""The one exception type for user mistakes, and the one warning type for what a user should know.

Anything a user can get wrong (an unknown method, option, task or backbone, a missing file, a malformed line)
raises :class:`UserError` with a one-line message naming the culprit and how to fix it. The CLI prints that line
and exits non-zero; it never shows a traceback for a ``UserError``. A :class:`Notice` is printed as one line too
(``medpeft: warning: ...``) and the work goes on.

A bad value of a parameter of a library call raises :class:`ParameterError`, whose message names the parameter
(``lr 0 must be positive``); a front end renders it under its own name for it (the CLI: ``--lr 0 must be
positive``). A message may name a parameter set to a value (``{pretrained=False}``): the CLI names the flag that sets
it (``--no-pretrained``).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any


class UserError(ValueError):
    """A mistake in what the user asked for; the message is one line, ready to print."""


class ParameterError(UserError):
    """A bad value of the parameter ``parameter``. ``template`` is the message with each parameter it names in
    braces, and the values it shows as further fields given in ``values``: ``ParameterError("lr", "{lr} {value}
    must be positive", value=0)``. ``str(error)`` names the parameters as the library does (``lr 0 must be
    positive``), :meth:`named` as a front end does (the CLI, by their flags: ``--lr 0 must be positive``)."""

    def __init__(self, parameter: str, template: str, **values: Any):
        self.parameter, self.template, self.values = parameter, template, values
        super().__init__(self.named(lambda name: name))

    @property
    def parameters(self) -> list[str]:
        """The parameters the message names, in order."""
        fields = (field for _, field, _, _ in string.Formatter().parse(self.template) if field)
        return list(dict.fromkeys(f for f in fields if f not in self.values))

    def named(self, name: Callable[[str], str]) -> str:
        """The message with each parameter called ``name(parameter)``."""
        return self.template.format(**{p: name(p) for p in self.parameters}, **self.values)


class Notice(UserWarning):
    """Something the user should know, said in one line; the run goes on."""
