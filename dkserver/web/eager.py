"""Run a coroutine's first step at once, and a Deferred only if it waits.

``Deferred.fromCoroutine`` costs a Deferred, two inlineCallbacks frames and
the type checks on every call, even when the coroutine never waits: a login
step whose limits, challenge and user are all in memory.  `first_step` runs
the coroutine by hand; only one that is suspended on a Deferred is handed to
Twisted, which resumes it from where it stopped.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from twisted.internet.defer import Deferred


class Waiting:
    """The coroutine did not finish in its first step; ``deferred`` fires
    with its result (or failure)."""

    __slots__ = ("deferred",)

    def __init__(self, deferred: Deferred) -> None:
        self.deferred = deferred


def first_step(coro: Coroutine) -> Any:
    """The coroutine's result if it finished without waiting, else `Waiting`.

    An exception it raised in that first step propagates to the caller.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    return Waiting(Deferred.fromCoroutine(_rest(coro)))


def _rest(coro: Coroutine) -> Generator[Any, Any, Any]:
    """The rest of a started coroutine, as a generator Twisted can drive.

    Awaiting the coroutine itself is refused ("being awaited already");
    delegating to its iterator is not.  The first resumption re-enters the
    Deferred it is suspended on, which yields itself again until it fires.
    """
    return (yield from coro.__await__())
