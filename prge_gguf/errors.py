"""The one exception type users see: a one-line message naming the place and the fix."""


class PrgeError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with code 2."""
