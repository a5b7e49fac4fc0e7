"""The one exception type for user mistakes: the CLI prints its message on one line, without a traceback."""


class CirnError(Exception):
    """A user-facing error: bad input, a missing file, a wrong option. The message says what to do."""
