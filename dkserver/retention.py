"""Retention passes: the server's timer and ``dkserver prune`` share them.

A pass runs each kind of `dkserver.store.retention` in order, one small
transaction (``batch`` rows) at a time, until that kind has nothing left
older than its cutoff; the group writer's commits interleave with the
batches.  Rows deleted are counted in ``dkserver_pruned_rows_total{table}``,
pending messages dropped undelivered in
``dkserver_pending_messages_dropped_total`` and in a warning.  Settings:
docs/operating/retention.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from dkserver.store.retention import KINDS, Cutoffs

#: After each batch a pass waits this many times as long as the batch took:
#: pruning takes at most a third of the database's time (SQLite: of its one
#: connection), whatever the machine's load, since a batch that takes longer
#: is followed by a longer wait.
YIELD_RATIO = 2.0


@dataclass(frozen=True)
class Policy:
    """What is kept how long (from the configuration)."""

    retention_days: float | None
    pending_max_days: float | None
    rollup_days: float | None
    batch: int

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        return cls(
            config.retention_days,
            config.pending_max_days,
            config.stats_rollup_days,
            config.prune_batch,
        )

    def cutoffs(self, now_ns: int) -> Cutoffs:
        return Cutoffs.at(
            now_ns, self.retention_days, self.pending_max_days, self.rollup_days
        )


@dataclass
class PassReport:
    deleted: Counter = field(default_factory=Counter)
    dropped_pending: int = 0
    batches: int = 0
    #: Another node (or the CLI) was pruning: this pass stopped early.
    busy: bool = False
    #: Stopped because the service is stopping.
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "deleted": dict(sorted(self.deleted.items())),
            "dropped_pending": self.dropped_pending,
            "batches": self.batches,
            "busy": self.busy,
        }


class Pruner:
    log = Logger()

    def __init__(
        self,
        store: Any,
        policy: Policy,
        metrics: Any = None,
        time_ns: Callable[[], int] = time.time_ns,
        quota: Any = None,
        clock: Any = None,
        yield_ratio: float = YIELD_RATIO,
        on_pending_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.time_ns = time_ns
        #: The writer's PendingQuota, told when pending messages are dropped.
        self.quota = quota
        #: After each batch, wait ``yield_ratio`` times as long as it took,
        #: on ``clock`` (None: no wait; the writer's commits still run
        #: between two batches).
        self.clock = clock
        self.yield_ratio = yield_ratio
        #: Told how many pending messages each batch dropped (the pending
        #: backlog gauge, dkserver.gauges, follows at once).
        self.on_pending_dropped = on_pending_dropped
        #: Where the pending scan resumes (see store.retention._pending_txn).
        self._pending_cursor = 0
        self.stopping = False

    async def dry_run(self) -> dict[str, int]:
        return await self.store.retention.count(self.policy.cutoffs(self.time_ns()))

    async def run_pass(self) -> PassReport:
        cutoffs = self.policy.cutoffs(self.time_ns())
        report = PassReport()
        for kind in KINDS:
            cutoff = cutoffs.of(kind)
            if cutoff is None:
                continue
            cursor = self._pending_cursor if kind == "pending" else 0
            while True:
                if self.stopping:
                    report.interrupted = True
                    return report
                began = time.monotonic()
                step = await self.store.retention.step(
                    kind, cutoff, self.policy.batch, cursor
                )
                took = time.monotonic() - began
                report.batches += 1
                cursor = step.cursor
                if kind == "pending":
                    self._pending_cursor = cursor
                self._count(report, step)
                if step.busy:
                    report.busy = True
                    return report
                if step.done:
                    break
                if self.clock is not None and self.yield_ratio > 0:
                    await deferLater(self.clock, took * self.yield_ratio)
        if report.dropped_pending and self.quota is not None:
            self.quota.forget()
        return report

    def _count(self, report: PassReport, step: Any) -> None:
        report.deleted.update(step.deleted)
        report.dropped_pending += step.dropped
        if step.dropped and self.on_pending_dropped is not None:
            self.on_pending_dropped(step.dropped)
        if self.metrics is not None:
            for table, n in step.deleted.items():
                if n:
                    self.metrics.pruned_rows.labels(table=table).inc(n)
            if step.dropped:
                self.metrics.pending_dropped.inc(step.dropped)


class PruneService(Service):
    """Runs a `Pruner` pass every ``interval`` seconds, the first one
    ``interval`` after start (and only once ``ready()``: the schema is
    migrated).  A failing pass is logged; the next one runs on time."""

    name = "prune"
    log = Logger()

    def __init__(
        self,
        pruner: Pruner,
        interval: float,
        clock: Any,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.pruner = pruner
        self.interval = interval
        self.clock = clock
        self.ready = ready
        self._loop: LoopingCall | None = None
        self._current: Deferred | None = None
        self.passes = 0

    def startService(self) -> None:
        super().startService()
        self.pruner.stopping = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("prune timer stopped", f)
        )

    def _tick(self) -> Deferred:
        if not self.ready() or self._current is not None:
            return succeed(None)
        d = Deferred.fromCoroutine(self._pass())
        d.addErrback(lambda f: self.log.failure("prune pass failed", f))
        self._current = d

        def finished(result: object) -> None:
            self._current = None

        d.addBoth(finished)
        return d

    async def _pass(self) -> None:
        started = time.monotonic()
        report = await self.pruner.run_pass()
        self.passes += 1
        deleted = sum(report.deleted.values())
        if report.dropped_pending:
            self.log.warn(
                "retention dropped {count} pending messages undelivered after"
                " {days} days",
                count=report.dropped_pending,
                days=self.pruner.policy.pending_max_days,
                dropped_pending=report.dropped_pending,
            )
        if deleted or report.busy:
            self.log.info(
                "retention pass: deleted {deleted} rows in {batches} batches"
                " ({seconds:.2f} s){busy}",
                deleted=deleted,
                batches=report.batches,
                seconds=time.monotonic() - started,
                busy="; another node is pruning" if report.busy else "",
                tables=dict(report.deleted),
            )

    def stopService(self) -> Deferred:
        super().stopService()
        self.pruner.stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        current = self._current
        if current is None:
            return succeed(None)
        waiting: Deferred = Deferred()
        current.addBoth(lambda _: waiting.callback(None))
        return waiting
