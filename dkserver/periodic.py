"""Periodic work that never dies.

A ``LoopingCall`` whose function raises stops for good, so every periodic
function runs through :func:`never_raises`, which logs the failure instead.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()


def never_raises(name: str, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.failure("periodic task {name} failed; it keeps running", name=name)

    return run


def periodic_service(
    name: str, interval: float, fn: Callable[[], object], clock
) -> TimerService:
    """A named TimerService on an injected clock."""
    service = TimerService(interval, never_raises(name, fn))
    service.clock = clock
    service.setName(name)
    return service
