"""Readiness: can this process take messages now?

``/readyz``, and the systemd watchdog (dkserver/systemd.py), ask
:meth:`Readiness.check`, which names every failing part:

* **database**: startup migrations finished, and a commit succeeds.  The
  group writer's own commits count: one within the last RECENT_COMMIT
  seconds, with no failure after it, proves the database writable without
  any extra work, so a busy server is never written to by its probes.  An
  idle one (or one whose last commit failed) commits a heartbeat row through
  the writer (:meth:`GroupWriter.probe`), at most one at a time, and waits up
  to PROBE_TIMEOUT for it.  A real commit, rather than a ping or a read,
  because the failures that matter (a full disk, a read-only file, a lock
  held by another process, PostgreSQL in recovery) let reads through.
* **writer**: the group writer is not closed, its running batch has not
  been in the database longer than PROBE_TIMEOUT (a stuck commit stalls every
  message behind it), and a heartbeat it was handed got into a batch (a
  writer loop that stopped running leaves it queued).
* **redis** (a cluster node only): the command connection is up and the
  subscriber connected.

Nothing here raises; a check costs at most one small commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from dkserver.store.writer import GroupWriter

#: A commit of the writer this recent (seconds) proves the database writable.
RECENT_COMMIT = 5.0

#: How long a heartbeat commit may take before the database counts as failing.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Verdict:
    #: (part, why) for every failing part; empty: ready.
    failing: tuple[tuple[str, str], ...]

    @property
    def ready(self) -> bool:
        return not self.failing

    def describe(self) -> str:
        return "; ".join(f"{part}: {why}" for part, why in self.failing)


class Readiness:
    log = Logger()

    def __init__(
        self,
        writer: GroupWriter,
        clock: Any,
        *,
        migrated: Callable[[], bool],
        closing: Callable[[], bool],
        redis: Any = None,
        recent: float = RECENT_COMMIT,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._writer = writer
        self._clock = clock
        self._migrated = migrated
        self._closing = closing
        #: A RedisService (``connected``, ``subscribed``), or None.
        self._redis = redis
        self.recent = recent
        self.probe_timeout = probe_timeout
        self._probing = False
        self._waiters: list[tuple[Deferred, Any]] = []
        self._last: Verdict | None = None

    async def check(self) -> Verdict:
        failing: list[tuple[str, str]] = []
        if self._closing():
            failing.append(("server", "shutting down"))
        if not self._migrated():
            failing.append(("database", "starting (migrations not finished)"))
        else:
            problem = await self._database()
            if problem is not None:
                failing.append(problem)
        stuck = self._writer_problem()
        if stuck is not None:
            failing.append(("writer", stuck))
        if self._redis is not None:
            if not self._redis.connected:
                failing.append(("redis", "not connected"))
            elif not self._redis.subscribed:
                failing.append(("redis", "subscriber not connected"))
        verdict = Verdict(tuple(failing))
        self._log_change(verdict)
        return verdict

    def _writer_problem(self) -> str | None:
        w = self._writer
        if w.closed:
            return "closed (shutting down)"
        if w.busy_since is not None:
            busy = self._clock.seconds() - w.busy_since
            if busy > self.probe_timeout:
                return f"a commit has been running for {busy:.0f} s"
        return None

    async def _database(self) -> tuple[str, str] | None:
        w = self._writer
        now = self._clock.seconds()
        failed_since = w.last_failure is not None and (
            w.last_commit is None or w.last_failure[0] >= w.last_commit
        )
        if (
            not failed_since
            and w.last_commit is not None
            and now - w.last_commit <= self.recent
        ):
            return None
        try:
            await self._probe()
        except TimeoutError:
            if w.busy_since is None and not w.closed:
                # Queued, yet no batch is in the database: the loop is dead.
                return (
                    "writer",
                    f"a queued commit was not started within {self.probe_timeout:g} s",
                )
            return (
                "database",
                f"a commit did not finish within {self.probe_timeout:g} s",
            )
        except Exception as e:
            return ("database", f"a commit failed: {e}")
        return None

    def _probe(self) -> Deferred:
        """Wait (at most ``probe_timeout``) for the heartbeat commit in
        flight, starting one if there is none: one at a time however many
        probes ask.  A timed-out one stays queued in the writer."""
        waiter: Deferred = Deferred()
        timer = self._clock.callLater(self.probe_timeout, self._time_out, waiter)
        self._waiters.append((waiter, timer))
        if not self._probing:
            self._probing = True
            self._writer.probe().addBoth(self._probe_done)
        return waiter

    def _time_out(self, waiter: Deferred) -> None:
        self._waiters = [(w, t) for w, t in self._waiters if w is not waiter]
        waiter.errback(TimeoutError())

    def _probe_done(self, result: object) -> None:
        self._probing = False
        waiters, self._waiters = self._waiters, []
        for waiter, timer in waiters:
            timer.cancel()
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    def _log_change(self, verdict: Verdict) -> None:
        last, self._last = self._last, verdict
        if last is not None and last.ready == verdict.ready:
            return
        if verdict.ready:
            if last is not None:
                self.log.info("ready again")
        else:
            self.log.warn("not ready: {problems}", problems=verdict.describe())
