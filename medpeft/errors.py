"""The one exception type for user mistakes, and the one warning type for what a user should know.

Anything a user can get wrong (an unknown method, option, task or backbone, a missing file, a malformed line)
raises :class:`UserError` with a one-line message naming the culprit and how to fix it. The CLI prints that line
and exits non-zero; it never shows a traceback for a ``UserError``. A :class:`Notice` is printed as one line too
(``medpeft: warning: ...``) and the work goes on.
"""


class UserError(ValueError):
    """A mistake in what the user asked for; the message is one line, ready to print."""


class Notice(UserWarning):
    """Something the user should know, said in one line; the run goes on."""
