"""The forward API: an HTTP request waits for the token owner's own client.

The wire protocol carries no correlation id, and not every connection of a
user answers (the desktop app keeps a silent one beside the ``dk`` agent's).
So:

* a user's requests are **serialized**: one is outstanding at a time, later
  ones wait their turn (the timeout covers the wait);
* a request goes to the user's connections known to answer (those that
  answered before), or to all of them when none is known; the first answer
  wins;
* each connection keeps, in FIFO order, the requests sent to it, and its
  k-th answer belongs to the k-th request: an answer to an earlier request
  that timed out, or that another connection answered first, is discarded
  and never answers a later one;
* a connection that leaves ``max_unanswered`` requests unanswered is not
  asked again (until it answers), which also bounds that bookkeeping.

Only the token owner's own connections are asked, so no other user can
answer for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Requests a connection may leave unanswered before it is not asked again.
MAX_UNANSWERED = 16

T = TypeVar("T")


class ForwardTimeout(Exception):
    """No answer in time."""


class NotConnected(Exception):
    """The user has no open connection to ask."""


@dataclass(eq=False)
class _Request:
    parse: Callable[[str], Any]
    #: Connections asked and still open.
    asked: set = field(default_factory=set)
    answer: Deferred = field(default_factory=Deferred)


@dataclass(eq=False)
class _Peer:
    """What the broker knows about one connection it has asked."""

    #: Requests sent to it and not answered by it, oldest first (including
    #: ones that timed out or another connection answered).
    sent: deque = field(default_factory=deque)
    answers: bool = False


class ForwardBroker:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        max_unanswered: int = MAX_UNANSWERED,
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self.max_unanswered = max_unanswered
        self._locks: dict[str, DeferredLock] = {}
        self._peers: dict[Any, _Peer] = {}

    async def ask(
        self,
        user_id: str,
        connections: Callable[[str], Sequence[Any]],
        send: Callable[[Any], None],
        parse: Callable[[str], T | None],
    ) -> T:
        """Send a request to the user's answering connections; its answer.

        ``connections(user_id)`` lists the user's open connections once it is
        this request's turn; ``send(connection)`` writes the request frame;
        ``parse(content)`` turns an answer frame's content into the result
        (None: not an answer).
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
            targets = self._targets(connections(user_id))
            request = _Request(parse, set(targets))
            for connection in targets:
                self._peers.setdefault(connection, _Peer()).sent.append(request)
            for connection in targets:
                send(connection)
            remaining = max(0.0, deadline - self._clock.seconds())
            timer = self._clock.callLater(remaining, request.answer.cancel)
            try:
                return await request.answer
            except CancelledError:
                raise ForwardTimeout()
            finally:
                if timer.active():
                    timer.cancel()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    def _targets(self, connections: Sequence[Any]) -> list[Any]:
        if not connections:
            raise NotConnected()
        willing = [
            c
            for c in connections
            if c not in self._peers or len(self._peers[c].sent) < self.max_unanswered
        ]
        if not willing:
            # Every connection has ignored its last requests: none will answer.
            raise ForwardTimeout()
        known = [c for c in willing if c in self._peers and self._peers[c].answers]
        return known or willing

    def answer(self, connection: Any, content: str) -> bool:
        """An answer frame from ``connection``; False if nothing waits for it
        (no request sent to it, not an answer, or its request is over)."""
        peer = self._peers.get(connection)
        if peer is None or not peer.sent:
            return False
        request = peer.sent[0]
        result = request.parse(content)
        if result is None:
            return False
        peer.sent.popleft()
        peer.answers = True
        request.asked.discard(connection)
        if request.answer.called:
            self.log.info(
                "discarded a late forward answer from {user_id}",
                user_id=getattr(connection, "user_id", None),
            )
            return False
        request.answer.callback(result)
        return True

    def connection_lost(self, connection: Any) -> None:
        """A connection went away: a request no open connection was asked
        fails at once instead of waiting for the timeout."""
        peer = self._peers.pop(connection, None)
        if peer is None:
            return
        for request in peer.sent:
            request.asked.discard(connection)
            if not request.asked and not request.answer.called:
                request.answer.errback(NotConnected())
