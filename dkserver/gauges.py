"""Gauges that come from the database, kept off the scrape path.

A scrape runs on the reactor; it must never wait for (or queue) a query.  So
``/metrics`` reads two numbers held here:

- the pending backlog (direct messages stored and not yet proven read):
  counted once when the server starts, then kept current from the group
  writer's own counts (stored minus marked delivered), which cost two integer
  additions per batch.  Where several nodes write (PostgreSQL: the engine's
  ``pending_recount_interval``) it is counted again now and then through the
  pool, beside the writer's connection, and the writer's counts since then
  are added to that;
- the database size, read every SIZE_INTERVAL seconds through the pool
  (SQLite: a stat of the file and its WAL; PostgreSQL: ``pg_database_size``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.metrics import Metrics
from dkserver.periodic import periodic_service
from dkserver.store import Store, StoreUnavailable
from dkserver.store.writer import GroupWriter

#: Seconds between database size readings.
SIZE_INTERVAL = 30.0


class StoreGauges:
    log = Logger()

    def __init__(
        self, store: Store, writer: GroupWriter, metrics: Metrics, clock: Any
    ) -> None:
        self._store = store
        self._writer = writer
        self._metrics = metrics
        self._clock = clock
        #: The last full count, and the writer's counts when it arrived.
        self._counted: int | None = None
        self._stored_then = 0
        self._delivered_then = 0
        self._counting = False
        #: Pending messages deleted by others than the writer (retention).
        self._removed = 0
        metrics.track_pending(self.pending)

    def pending(self) -> float:
        """The backlog gauge's value (NaN until the first count is in)."""
        if self._counted is None:
            return float("nan")
        w = self._writer
        return max(
            0,
            self._counted
            + (w.direct_stored - self._stored_then)
            - (w.direct_delivered - self._delivered_then)
            - self._removed,
        )

    def pending_removed(self, count: int) -> None:
        """``count`` pending messages were deleted outside the writer (a
        retention job dropping expired ones): the gauge follows at once
        instead of at the next count."""
        self._removed += count

    def services(self) -> list[IService]:
        """Timers for DkService's "timers"; their first run is at once."""
        found = [
            periodic_service(
                "metrics-database-size", SIZE_INTERVAL, self.sample_size, self._clock
            )
        ]
        interval = self._store.engine.pending_recount_interval
        if interval is not None:
            found.append(
                periodic_service(
                    "metrics-pending-recount", interval, self.recount, self._clock
                )
            )
        return found

    def sample_size(self) -> Deferred:
        if self._counted is None:
            self.recount()  # the count at start failed: try again now
        d = Deferred.fromCoroutine(self._store.database_size())
        d.addCallbacks(
            self._metrics.database_size.set, self._failed, errbackArgs=("size",)
        )
        return d

    def recount(self) -> Deferred | None:
        """Count the pending messages again (one count at a time)."""
        if self._counting:
            return None
        self._counting = True
        d = Deferred.fromCoroutine(self._store.messages.pending_count())
        d.addCallbacks(self._count_arrived, self._failed, errbackArgs=("backlog",))
        d.addBoth(self._count_done)
        return d

    def _count_arrived(self, count: int) -> None:
        self._counted = count
        self._removed = 0
        self._stored_then = self._writer.direct_stored
        self._delivered_then = self._writer.direct_delivered

    def _count_done(self, _: object) -> None:
        self._counting = False

    def _failed(self, failure, what: str) -> None:
        if failure.check(StoreUnavailable):
            # The writer already says so; the gauge keeps its last value.
            self.log.debug(
                "metrics: {what} not read: {reason}",
                what=what,
                reason=failure.getErrorMessage(),
            )
        else:
            self.log.failure("metrics: reading the {what} failed", failure, what=what)
