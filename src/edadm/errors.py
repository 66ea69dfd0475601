"""User-facing errors.

Anything a user can get wrong (a bad flag, a missing directory, a corrupted file) raises
:class:`EdadmError`; the CLI prints its message on one line and exits with code 2.
"""


class EdadmError(Exception):
    """An error caused by the user's input; its message says what to fix."""
