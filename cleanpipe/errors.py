"""The one exception type for errors a user can cause.

The CLI turns a :class:`CleanpipeError` into a single line on stderr and a non-zero
exit code; anything else escaping a command is a bug and keeps its traceback.
"""


class CleanpipeError(Exception):
    """A problem with the user's input or run directory, with a message that names the fix.

    The message is flattened to one line, so library messages quoted in it (which can
    span lines) still print as one.
    """

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))
