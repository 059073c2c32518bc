"""Connects' first backlog reads, gathered into few trips to the database.

Every connect reads the first page of its backlog before anything else is
sent to it.  In a reconnect storm thousands do, and they come in bunches:
the group writer's commit fires every waiting connect's ``flush`` in one
reactor turn.  One trip each costs the reactor a Deferred, a hand-off to
the pool's thread and one back, and the database a transaction.  Here the
reads asked for in one reactor turn (and those asked for while the trips
are busy) go in one transaction, each read as it would run alone, in user
id order (on PostgreSQL a read's raised broadcast floor stays locked until
the commit: trips side by side take those locks in one order).  A lone
connect waits one reactor turn more than before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger, LogLevel

from dkserver.store.errors import StoreUnavailable
from dkserver.store.messages import MessageStore

#: Reads one trip takes at most: a trip holds its connection (and, on SQLite,
#: the writer's only thread) for every read in it, up to a page of each kind.
MAX_READS = 64


class FirstPageReads:
    """`MessageStore.backlog_first_pages`, gathered.

    ``trips``: how many may be in the database at once (one for SQLite's
    single connection; on PostgreSQL some of the writer pool's, leaving the
    rest to the group writer).  ``on_read()`` and ``on_trip()`` count each
    read asked for and each transaction (the metrics).
    """

    log = Logger()

    def __init__(
        self,
        messages: MessageStore,
        clock: Any,
        trips: int = 1,
        max_reads: int = MAX_READS,
        on_read: Callable[[], object] = lambda: None,
        on_trip: Callable[[], object] = lambda: None,
    ) -> None:
        self._messages = messages
        self._on_read = on_read
        self._on_trip = on_trip
        self._clock = clock
        self._trips = max(1, trips)
        self._max = max_reads
        self._waiting: list[tuple[str, int, Deferred]] = []
        self._busy = 0
        self._scheduled = False

    def read(self, user_id: str, limit: int) -> Deferred:
        """Fires with ``(direct, broadcasts)`` as `backlog_first_pages`
        would, or with its error: a failed trip is retried read by read, so
        one user's failure is that user's alone (but for `StoreUnavailable`,
        which every read of the trip gets at once)."""
        self._on_read()
        d: Deferred = Deferred()
        self._waiting.append((user_id, limit, d))
        if not self._scheduled and self._busy < self._trips:
            self._scheduled = True
            self._clock.callLater(0, self._send)
        return d

    def _send(self) -> None:
        self._scheduled = False
        while self._waiting and self._busy < self._trips:
            batch = self._waiting[: self._max]
            del self._waiting[: self._max]
            self._busy += 1
            Deferred.fromCoroutine(self._trip(batch)).addErrback(
                lambda f: self.log.failure("backlog read trip failed", f)
            )

    async def _trip(self, batch: list[tuple[str, int, Deferred]]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(*batch[0])
                return
            self._on_trip()
            try:
                results = await self._messages.backlog_first_pages_many(
                    [(user_id, limit) for user_id, limit, _ in batch]
                )
            except StoreUnavailable as e:
                # Nobody's read would fare better alone (the same outage,
                # and as many timeouts as reads).
                for _, _, d in batch:
                    d.errback(e)
                return
            except Exception:
                # Read by read, side by side, to find whose fails: the others
                # still get theirs (and each failure reaches its caller).
                self.log.failure(
                    "a backlog read trip of {count} failed; reading each alone",
                    count=len(batch),
                    level=LogLevel.warn,
                )
                await DeferredList(
                    [Deferred.fromCoroutine(self._alone(*read)) for read in batch]
                )
                return
            for (_, _, d), result in zip(batch, results, strict=True):
                d.callback(result)
        finally:
            self._busy -= 1
            if self._waiting and not self._scheduled:
                # They waited for this trip; they go now.
                self._send()

    async def _alone(self, user_id: str, limit: int, d: Deferred) -> None:
        self._on_trip()
        try:
            result = await self._messages.backlog_first_pages(user_id, limit)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)
