"""A formatted time, kept for the second it falls in.

Log lines and the HTTP ``Date`` header carry whole seconds, and formatting a
time (a time-zone lookup, ``strftime``) costs more than the rest of a short
line: every caller within one second gets the text formatted once.
"""

from __future__ import annotations

from collections.abc import Callable


class PerSecond:
    """``format(int(when))``, formatted again only when the second changes."""

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, format: Callable[[int], str | bytes]) -> None:
        self._format = format
        self._second: int | None = None
        self._text: str | bytes = ""

    def __call__(self, when: float) -> str | bytes:
        second = int(when)
        if second != self._second:
            self._text = self._format(second)
            self._second = second
        return self._text
