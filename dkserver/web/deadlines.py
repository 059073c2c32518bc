"""Arrival deadlines of HTTP requests, all on one timer.

Every request gets the same time to arrive, so the order in which requests
start is the order of their deadlines: a dict keeps them in it, and one
``DelayedCall`` waits for the oldest.  A ``callLater`` and ``cancel`` per
request (a DelayedCall, a heap push, and the heap's clean-up of the
cancelled call) was per-request work that grew with keep-alive load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ArrivalDeadlines:
    """Call ``too_slow()`` on each request not `arrived` within ``allowance``."""

    def __init__(self, clock: IReactorTime, allowance: float) -> None:
        self._clock = clock
        self._allowance = allowance
        #: request -> its deadline on the clock, oldest first.
        self._waiting: dict[Any, float] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, request: Any) -> None:
        self._waiting[request] = self._clock.seconds() + self._allowance
        if self._timer is None:
            self._timer = self._clock.callLater(self._allowance, self._expire)

    def arrived(self, request: Any) -> None:
        """``request`` is in (or gone): it has no deadline any more."""
        self._waiting.pop(request, None)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        late: list[Callable[[], None]] = []
        waiting = self._waiting
        while waiting:
            request, due = next(iter(waiting.items()))
            if due > now:
                break
            del waiting[request]
            late.append(request.too_slow)
        if waiting:
            due = next(iter(waiting.values()))
            self._timer = self._clock.callLater(due - now, self._expire)
        for too_slow in late:
            too_slow()

    def idle(self) -> None:
        """Drop the timer if no request waits for it (the site stopped
        listening: leave no call behind in the reactor for nothing)."""
        if not self._waiting and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
