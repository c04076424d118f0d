"""The package's error type: every message names what is wrong and what to do about it."""


class DinoMixError(RuntimeError):
    """A user-facing error. Command-line tools print its message without a traceback and exit with 1."""
