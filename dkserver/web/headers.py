"""Headers every response gets, set without twisted's per-call work.

``Headers.setRawHeaders`` canonicalizes and checks the name and sanitizes
the value on every call: for the four security headers that was ~2.3 µs of
each request, and twisted.web formats ``Date`` anew for each one too.  The
names and values here are constants, so they are checked once, at import.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

from dkserver.per_second import PerSecond


def canonical(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """``pairs`` as ``Headers`` itself stores them (checked, canonical case)."""
    h = Headers()
    for name, value in pairs:
        h.setRawHeaders(name, [value])
    return tuple((name, values[0]) for name, values in h.getAllRawHeaders())


def set_headers(headers: Headers, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    """Set `canonical` ``pairs`` on ``headers``, replacing any values."""
    raw = getattr(headers, "_rawHeaders", None)
    if raw is None:  # not the Headers this was written against
        for name, value in pairs:
            headers.setRawHeaders(name, [value])
        return
    for name, value in pairs:
        raw[name] = [value]  # a list of its own: addRawHeader appends


class HttpDate:
    """The ``Date`` header's value, formatted once per second."""

    __slots__ = ("_clock", "_format")

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._format = PerSecond(datetimeToString)

    def __call__(self) -> bytes:
        return self._format(self._clock())
