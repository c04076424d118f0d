"""The package's error type: every message names what is wrong and what to do about it."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional, Sequence


class DinoMixError(RuntimeError):
    """A user-facing error. Command-line tools print its message without a traceback and exit with 1."""


def command(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """The one error wrapper of this package's commands: a :class:`DinoMixError` is printed as ``ERROR: <message>``
    on stderr and the command exits with 1, without a traceback (the message says what to do). Any other
    exception is a bug and keeps its traceback."""
    @functools.wraps(main)
    def run(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except DinoMixError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
    return run
