"""The forward API: an HTTP request waits for the token owner's own client.

The wire protocol carries no correlation id, so a user's forward requests are
**serialized**: one is outstanding at a time per user, later ones wait their
turn (the timeout covers the wait).  A request is bound to one connection (the
user's newest) and only an answer from that same connection resolves it, so
concurrent requests never receive each other's answers and another device
cannot answer for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class ForwardTimeout(Exception):
    """No answer in time."""


class NotConnected(Exception):
    """The user has no open connection to ask."""


@dataclass
class _Waiting:
    connection: Any
    answer: Deferred = field(default_factory=Deferred)


class ForwardBroker:
    log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._locks: dict[str, DeferredLock] = {}
        self._waiting: dict[str, _Waiting] = {}

    async def ask(self, user_id: str, pick_connection, send) -> str:
        """Send a request to one of the user's connections; return its answer.

        ``pick_connection(user_id)`` chooses the connection (or None) once it is
        this request's turn; ``send(connection)`` writes the request frame.
        """
        lock = self._locks.setdefault(user_id, DeferredLock())
        deadline = self._clock.seconds() + self.timeout
        acquire = lock.acquire()
        timer = self._clock.callLater(self.timeout, acquire.cancel)
        try:
            await acquire
        except CancelledError:
            raise ForwardTimeout()
        finally:
            if timer.active():
                timer.cancel()
        try:
            connection = pick_connection(user_id)
            if connection is None:
                raise NotConnected()
            waiting = _Waiting(connection)
            self._waiting[user_id] = waiting
            send(connection)
            remaining = max(0.0, deadline - self._clock.seconds())
            timer = self._clock.callLater(remaining, waiting.answer.cancel)
            try:
                return await waiting.answer
            except CancelledError:
                raise ForwardTimeout()
            finally:
                if timer.active():
                    timer.cancel()
                if self._waiting.get(user_id) is waiting:
                    del self._waiting[user_id]
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    def answer(self, connection: Any, text: str) -> bool:
        """Deliver an answer from ``connection``; False if nothing waits for it."""
        waiting = self._waiting.get(connection.user_id)
        if waiting is None or waiting.connection is not connection:
            return False
        del self._waiting[connection.user_id]
        if not waiting.answer.called:
            waiting.answer.callback(text)
        return True

    def connection_lost(self, connection: Any) -> None:
        """A connection that was asked went away: fail fast, don't wait 30 s."""
        waiting = self._waiting.get(connection.user_id)
        if waiting is not None and waiting.connection is connection:
            del self._waiting[connection.user_id]
            if not waiting.answer.called:
                waiting.answer.errback(NotConnected())
