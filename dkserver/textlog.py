"""twistd's text log lines, with the time formatted once per second.

twistd's own text observer formats each event's time from scratch (a
time-zone lookup and ``strftime``): about a third of the cost of a log line,
and a reconnect storm writes two lines per connect.  The lines here are the
same, byte for byte: the default time format has no fraction of a second,
so every event of one second gets that second's text.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEventAsClassicLogText,
    formatTime,
)

from dkserver.per_second import PerSecond


class _SecondClock(PerSecond):
    """``formatTime`` of an event time, kept for the second it falls in."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(formatTime)

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(None)
        return super().__call__(when)


def text_observer(out: IO[str]) -> ILogObserver:
    """twistd's ``textFileLogObserver(out)``, with the cached time."""
    clock = _SecondClock()

    def format_event(event: Any) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=clock)

    return FileLogObserver(out, format_event)
