"""User-facing errors.

Anything a user can get wrong (a bad flag, a missing directory, a corrupted file) raises
:class:`EdadmError`; the CLI prints its message on one line and exits with code 2.
"""


class EdadmError(Exception):
    """An error caused by the user's input; its message says what to fix.

    The message is kept to one line whatever it quotes (file contents, exception text,
    user strings): line breaks become a visible "\\n".
    """

    def __init__(self, message: str = ""):
        # splitlines knows every line boundary (\n, \r, \f, \v, \x1c-\x1e, \x85, \u2028 ...)
        super().__init__("\\n".join(str(message).strip().splitlines()))
