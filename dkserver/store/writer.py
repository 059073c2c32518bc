"""Group commit: the one writer of the messaging hot path.

Everything submitted while a transaction is running goes into the next one,
so under load many frames share one transaction (and one fsync); a commit
also waits GROUP_DELAY (2 ms) for company, which at moderate load merges many
small commits for little latency.  One FIFO keeps causal order:
a session row is written before its message events, a message before its
``delivered`` mark.  A message counts as accepted when its batch commits; the
Deferred returned by :meth:`GroupWriter.submit_message` fires then.

When the database cannot be reached or written (`StoreUnavailable`:
PostgreSQL down or restarting, a full disk, a read-only file or database, a
lock held by another process, rights revoked) a batch fails as a whole: its
messages are refused (their senders are told to resend), while its
bookkeeping (delivery marks, session rows), which nobody can resend, goes
back to the head of the queue; the next try waits RETRY_DELAY, so an outage
costs an attempt every half second rather than a busy loop.  With nothing
queued the writer still tries, every RETRY_DELAY, with only the probe
(`_probe_txn`, which every batch of an outage carries), so it notices the
end of the outage without traffic.  The first batch that commits again
ends the outage; nothing committed before it is touched.  An outage is
logged once when it starts (naming its cause) and once when it ends, and
:attr:`GroupWriter.writable` is the ``dkserver_store_writable`` gauge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dkserver import timestamps
from dkserver.store.analytics import SESSION_COLUMNS, _end_sessions_txn
from dkserver.store.database import Database, Txn
from dkserver.store.errors import (
    IntegrityError,
    NulNotStorable,
    StoreError,
    StoreUnavailable,
)
from dkserver.store.messages import (
    DELIVERY_COLUMNS,
    NewMessage,
    insert_messages_txn,
    mark_delivered_txn,
)
from dkserver.store.quota import (
    PendingQuota,
    PendingQuotaExceeded,
    Staged,
    content_size,
)

#: Bound on the recipient cache (user ids), cleared when exceeded.
MAX_KNOWN_USERS = 200_000

#: A commit waits this long for more submissions.  Each transaction and each
#: trip to the database thread has a fixed cost; at moderate load 2 ms turns
#: many one-message commits into one, for at most 2 ms of added latency.
GROUP_DELAY = 0.002

#: After a batch failed on an unreachable database, the next one waits this
#: long: bookkeeping is retried and new messages refused at that pace.
RETRY_DELAY = 0.5

#: Messages in one transaction at most, so deliveries after a burst start
#: within one bounded transaction's time.
MAX_BATCH = 2000


@dataclass
class _Batch:
    #: (session_id, user_id, start time text, node_id)
    sessions_started: list[tuple[str, str, str, str | None]] = field(
        default_factory=list
    )
    messages: list[tuple[NewMessage, str | None]] = field(default_factory=list)
    #: One per message: called as ``done(message_id, failure)``.
    waiters: list[Callable[[int | None, Failure | None], None]] = field(
        default_factory=list
    )
    delivered: list[int] = field(default_factory=list)
    broadcast_deliveries: list[tuple[int, str]] = field(default_factory=list)
    sessions_ended: list[tuple[str, int]] = field(default_factory=list)
    flushed: list[Deferred] = field(default_factory=list)
    #: Nothing else to write during an outage: write the probe row.
    probe: bool = False
    #: Health probes (`GroupWriter.probe`): fire once this batch commits a
    #: heartbeat row, fail with the batch.
    probes: list[Deferred] = field(default_factory=list)

    def requeue_bookkeeping(self, failed: _Batch) -> None:
        """Put ``failed``'s rows other than messages before this batch's own
        (all are idempotent: a retried mark or session row changes nothing
        if the failed commit did happen)."""
        self.sessions_started[:0] = failed.sessions_started
        self.delivered[:0] = failed.delivered
        self.broadcast_deliveries[:0] = failed.broadcast_deliveries
        self.sessions_ended[:0] = failed.sessions_ended

    def size(self) -> int:
        return (
            len(self.sessions_started)
            + len(self.messages)
            + len(self.delivered)
            + len(self.broadcast_deliveries)
            + len(self.sessions_ended)
            + len(self.probes)
        )


class GroupWriter:
    log = Logger()

    def __init__(
        self,
        pool: Database,
        clock: Any,
        delay: float = GROUP_DELAY,
        node_id: str | None = None,
        commit_seconds: Callable[[float], None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        quota: PendingQuota | None = None,
        time_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._pool = pool
        self._clock = clock
        #: Per-recipient pending limits (dkserver.store.quota); None: none.
        self.quota = quota if quota is not None and quota.enabled else None
        #: Delivery times written with the delivered marks (retention).
        self._time_ns = time_ns
        #: Written into each session row: which node holds the connection.
        self.node_id = node_id
        #: PostgreSQL: a NUL outside the content (which is escaped) would
        #: fail the whole batch, so such a message is refused alone.
        self._refuse_nul = pool.engine.refuses_nul
        #: How long the first submission waits for company before a commit.
        self.delay = delay
        self._next = _Batch()
        self._running = False
        self._closed = False
        #: Since a batch failed on an unreachable database, until one commits.
        self.unavailable = False
        #: The `StoreUnavailable.cause` of the outage (None outside one).
        self.unavailable_cause: str | None = None
        self._outage_started: float | None = None
        #: Recipients known to exist; touched only on the pool's thread.
        #: Users are never deleted, so a positive answer stays true.
        self._known_users: set[str] = set()
        self.batches = 0
        self.rows = 0
        #: Direct messages this writer stored, and pending ones it marked
        #: delivered (dkserver.backlog turns them into the pending gauge).
        self.direct_stored = 0
        self.direct_delivered = 0
        #: Told each committed batch's duration in seconds (the metrics'
        #: commit histogram), measured with ``timer`` around the interaction.
        self._commit_seconds = commit_seconds
        self._timer = timer
        #: ``clock.seconds()`` of the last commit, and of the last failed one
        #: with its reason (for /readyz and the systemd watchdog).
        self.last_commit: float | None = None
        self.last_failure: tuple[float, str] | None = None
        #: Since when the running batch has been in the database (None: idle).
        self.busy_since: float | None = None

    # -- submissions -----------------------------------------------------------

    def submit_message(self, message: NewMessage, session_id: str | None) -> Deferred:
        """Store ``message`` (pending); fires with its id once committed, or with
        ``None`` when a direct message names a recipient that does not exist."""
        d: Deferred = Deferred()

        def done(message_id: int | None, failure: Failure | None) -> None:
            if failure is None:
                d.callback(message_id)
            else:
                d.errback(failure)

        self.submit(message, session_id, done)
        return d

    def submit(
        self,
        message: NewMessage,
        session_id: str | None,
        done: Callable[[int | None, Failure | None], None],
    ) -> None:
        """Like :meth:`submit_message` with a plain callback: the messaging hot
        path, where a Deferred and its callback chain per message is a
        measurable share of the CPU.  ``done`` must not raise."""
        if self._closed:
            done(None, Failure(StoreError("the server is shutting down; not stored")))
            return
        if self._refuse_nul and _has_nul(message):
            done(None, Failure(NulNotStorable()))
            return
        self._next.messages.append((message, session_id))
        self._next.waiters.append(done)
        self._kick()

    def mark_delivered(self, message_id: int, recipient: str | None = None) -> None:
        self._next.delivered.append(message_id)
        if recipient is not None and self.quota is not None:
            self.quota.drained(recipient)
        self._kick()

    def record_broadcast_delivery(self, message_id: int, user_id: str) -> None:
        self._next.broadcast_deliveries.append((message_id, user_id))
        self._kick()

    def start_session(self, session_id: str, user_id: str, start_ns: int) -> None:
        self._next.sessions_started.append(
            (
                session_id,
                user_id,
                timestamps.storage_from_unix_nanos(start_ns),
                self.node_id,
            )
        )
        self._kick()

    def end_session(self, session_id: str, end_ns: int) -> None:
        self._next.sessions_ended.append((session_id, end_ns))
        self._kick()

    def probe(self) -> Deferred:
        """Commit a heartbeat row (``server_settings`` name
        ``health_probe:<node>``) through the same queue as messages: fires
        once it is committed, fails as that batch does.  Proves both that
        this writer runs and that the database takes a commit."""
        d: Deferred = Deferred()
        if self._closed:
            d.errback(Failure(StoreError("the writer is closed (shutting down)")))
            return d
        self._next.probes.append(d)
        self._kick()
        return d

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> Deferred:
        """Refuse new messages; fires once everything before is committed."""
        self._closed = True
        return self.flush()

    def flush(self) -> Deferred:
        """Fires once everything submitted so far is committed."""
        d: Deferred = Deferred()
        if not self._running and not self._next.size():
            d.callback(None)
            return d
        self._next.flushed.append(d)
        self._kick()
        return d

    @property
    def writable(self) -> bool:
        """False from a batch failing on an unwritable database until one
        commits (the ``dkserver_store_writable`` gauge)."""
        return not self.unavailable

    def _probing(self) -> bool:
        """Whether the next batch carries the probe: during an outage."""
        return self.unavailable and not self._closed

    # -- the loop --------------------------------------------------------------

    def _kick(self, delay: float | None = None) -> None:
        if not self._running:
            self._running = True
            # Let the rest of this reactor turn add to the batch first.
            self._clock.callLater(self.delay if delay is None else delay, self._run)

    def _run(self) -> None:
        batch, self._next = self._next, _Batch()
        batch.probe = self._probing()
        if not batch.size() and not batch.flushed and not batch.probe:
            self._running = False
            return
        self.busy_since = self._clock.seconds()
        if len(batch.messages) > MAX_BATCH:
            # The rest of the messages go first in the next batch (which is
            # empty: it was created just above); flush() waiters wait for them.
            rest = self._next
            rest.messages = batch.messages[MAX_BATCH:]
            rest.waiters = batch.waiters[MAX_BATCH:]
            del batch.messages[MAX_BATCH:]
            del batch.waiters[MAX_BATCH:]
            rest.flushed, batch.flushed = batch.flushed, []
        started = self._timer()
        d = self._pool.runInteraction(
            _commit_txn,
            batch,
            self._known_users,
            self.quota,
            self._time_ns(),
            self.node_id,
        )
        d.addCallbacks(
            self._committed, self._failed, (batch, started), None, (batch,), None
        )
        d.addErrback(lambda f: self.log.failure("group writer bookkeeping", f))

    def _committed(self, result: _Committed, batch: _Batch, started: float) -> None:
        if self._commit_seconds is not None:
            self._commit_seconds(self._timer() - started)
        ids = result.ids
        self.direct_stored += result.direct_stored
        self.direct_delivered += result.delivered
        if self.unavailable:
            # Every batch of an outage carries the probe: this one could have
            # stored messages, so the outage is over.
            outage = self._outage_started
            seconds = 0.0 if outage is None else self._clock.seconds() - outage
            self.log.info(
                "database writable again after {seconds:.1f} s ({cause});"
                " storing messages",
                cause=self.unavailable_cause,
                seconds=seconds,
            )
            self.unavailable = False
            self.unavailable_cause = None
            self._outage_started = None
        if result.staged is not None:
            self.quota.apply(result.staged)
        self.batches += 1
        self.rows += batch.size()
        self.last_commit = self._clock.seconds()
        self.busy_since = None
        for probe in batch.probes:
            probe.callback(None)
        for done, message_id in zip(batch.waiters, ids, strict=True):
            try:
                if isinstance(message_id, PendingQuotaExceeded):
                    done(None, Failure(message_id))
                else:
                    done(message_id, None)
            except Exception:
                self.log.failure("delivering message {id} failed", id=message_id)
        self._continue(batch)

    def _failed(self, failure, batch: _Batch) -> None:
        retry = None
        self.last_failure = (self._clock.seconds(), failure.getErrorMessage())
        self.busy_since = None
        for probe in batch.probes:
            probe.errback(failure)
        if failure.check(StoreUnavailable):
            if failure.value.in_doubt:
                self.log.warn(
                    "{reason}: {count} messages may be stored although their"
                    " senders are told to resend",
                    reason=failure.getErrorMessage(),
                    count=len(batch.messages),
                )
            elif not self.unavailable or failure.value.cause != self.unavailable_cause:
                # Once per outage (and when its cause changes), not per frame.
                self.log.warn(
                    "{reason}; refusing messages until the database is back",
                    reason=failure.getErrorMessage(),
                    cause=failure.value.cause,
                )
            if not self.unavailable:
                self._outage_started = self._clock.seconds()
            self.unavailable = True
            self.unavailable_cause = failure.value.cause
            if not self._closed:
                self._next.requeue_bookkeeping(batch)
                retry = RETRY_DELAY
            elif batch.size() > len(batch.messages):
                self.log.warn(
                    "shutting down with {count} delivery marks and session rows"
                    " not written ({reason}): those messages stay pending and"
                    " are sent again",
                    count=batch.size() - len(batch.messages),
                    reason=failure.getErrorMessage(),
                )
        else:
            self.log.failure(
                "group commit of {count} rows failed", failure, count=batch.size()
            )
        for done in batch.waiters:
            try:
                done(None, failure)
            except Exception:
                self.log.failure("reporting a failed commit failed")
        self._continue(batch, retry)

    def _continue(self, batch: _Batch, delay: float | None = None) -> None:
        for d in batch.flushed:
            d.callback(None)
        self._running = False
        if self._next.size() or self._next.flushed:
            self._kick(delay)
        elif self._probing():
            self._kick(RETRY_DELAY)


def _has_nul(m: NewMessage) -> bool:
    return "\0" in f"{m.from_user}{m.to_user}{m.timestamp}{m.signature or ''}"


class _Committed(NamedTuple):
    #: One per message of the batch (None: unknown recipient; a
    #: PendingQuotaExceeded: refused, nothing stored).
    ids: list[int | PendingQuotaExceeded | None]
    #: Direct messages stored, pending messages marked delivered.
    direct_stored: int
    delivered: int
    #: The quota counters to apply once committed.
    staged: Staged | None


def _commit_txn(
    txn: Txn,
    batch: _Batch,
    known_users: set[str],
    quota: PendingQuota | None,
    now_ns: int,
    node_id: str | None = None,
) -> _Committed:
    if batch.sessions_started:
        txn.engine.insert_new_rows(
            txn, "sessions", SESSION_COLUMNS, batch.sessions_started
        )
    # Marks first: each names a message committed by an earlier batch (it
    # is delivered only after its commit), and the quota check below must
    # see the room they make.
    delivered = (
        mark_delivered_txn(txn, batch.delivered, now_ns) if batch.delivered else 0
    )
    staged = None
    ids: list = []
    if batch.messages:
        ids, staged = _insert_messages(txn, batch.messages, known_users, quota)
    direct = sum(
        1
        for (m, _), mid in zip(batch.messages, ids, strict=True)
        if isinstance(mid, int) and not m.is_broadcast
    )
    if batch.broadcast_deliveries:
        # A broadcast the retention sweep deleted meanwhile takes no rows.
        txn.engine.insert_new_rows(
            txn,
            "broadcast_deliveries",
            DELIVERY_COLUMNS,
            batch.broadcast_deliveries,
            parent=("message_id", "messages"),
        )
    for session_id, end_ns in batch.sessions_ended:
        _end_sessions_txn(txn, session_id, end_ns)
    if batch.probe:
        _probe_txn(txn)
    if batch.probes:
        txn.execute(
            "INSERT INTO server_settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (
                f"health_probe:{node_id or ''}",
                timestamps.storage_from_unix_nanos(time.time_ns()),
            ),
        )
    return _Committed(ids, direct, delivered, staged)


def _probe_txn(txn: Txn) -> None:
    """Fails when storing a message would, without storing one.

    A message row is inserted and taken back (a fault that spares some
    tables, such as REVOKE INSERT ON messages or a full tablespace holding
    only ``messages``, while delivery marks, UPDATEs, still commit, fails
    it too; id -1: no sequence is drawn), and one row is really written
    (a WAL frame on SQLite: a full disk, a read-only file or a held lock
    show only when something commits)."""
    txn.execute("SAVEPOINT probe")
    txn.execute(
        "INSERT INTO messages (id, from_user, to_user, content, status)"
        " SELECT -1, user_id, user_id, '', 'probe' FROM users LIMIT 1"
    )
    txn.execute("ROLLBACK TO SAVEPOINT probe")
    txn.execute("RELEASE SAVEPOINT probe")
    txn.execute(
        "INSERT INTO server_settings (name, value) VALUES ('writer_probe', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (timestamps.storage_from_unix_nanos(time.time_ns()),),
    )


def _insert_messages(
    txn: Txn,
    messages: list[tuple[NewMessage, str | None]],
    known_users: set[str],
    quota: PendingQuota | None = None,
) -> tuple[list[int | PendingQuotaExceeded | None], Staged | None]:
    """Insert the batch's messages to existing recipients, with their
    analytics rows; ``None`` in place of an id for an unknown recipient, a
    `PendingQuotaExceeded` for one past its quota (nothing stored).  Also
    the quota counters to apply after the commit."""
    unknown = {
        m.to_user
        for m, _ in messages
        if not m.is_broadcast and m.to_user not in known_users
    }
    if unknown:
        if len(known_users) > MAX_KNOWN_USERS:
            known_users.clear()
        known_users.update(_existing_users(txn, unknown))
    existing = known_users
    refused: dict[int, str] = {}
    staged = None
    if quota is not None:
        direct = [
            (i, m)
            for i, (m, _) in enumerate(messages)
            if not m.is_broadcast and m.to_user in existing
        ]
        if direct:
            verdicts, staged = quota.check_txn(
                txn, [(m.to_user, content_size(m.content)) for _, m in direct]
            )
            refused = {
                i: over
                for (i, _), over in zip(direct, verdicts, strict=True)
                if over is not None
            }
    ids: list = []
    accepted: list[NewMessage] = []
    events = []
    for n, (m, session_id) in enumerate(messages):
        if not m.is_broadcast and m.to_user not in existing:
            ids.append(None)
            continue
        if n in refused:
            ids.append(PendingQuotaExceeded(m.to_user, refused[n]))
            continue
        ids.append(len(accepted))  # position; replaced by the id below
        accepted.append(m)
        if session_id is not None:
            events.append(
                (
                    session_id,
                    m.from_user,
                    int(m.is_broadcast),
                    timestamps.storage_from_unix_nanos(m.received_ns),
                )
            )
    if accepted:
        stored = insert_messages_txn(txn, accepted)
        ids = [stored[i] if isinstance(i, int) else i for i in ids]
    if events:
        _insert_events(txn, events)
    return ids, staged


_EVENT_COLUMNS = ("session_id", "user_id", "is_broadcast", "timestamp")


def _insert_events(txn: Txn, events: list[tuple]) -> None:
    """Analytics rows; their session rows were written earlier by this writer.

    Should one be missing (its batch failed), the foreign key refuses the
    whole statement; then only events whose session exists are kept, so the
    messages of this batch are never lost over analytics.
    """
    try:
        txn.execute("SAVEPOINT events")
        txn.engine.insert_rows(txn, "message_events", _EVENT_COLUMNS, events)
    except IntegrityError:
        txn.execute("ROLLBACK TO SAVEPOINT events")
        txn.executemany(
            "INSERT INTO message_events (session_id, user_id, is_broadcast, timestamp)"
            " SELECT ?, ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM sessions WHERE session_id = ?)",
            [(*event, event[0]) for event in events],
        )
    txn.execute("RELEASE SAVEPOINT events")


def _existing_users(txn: Txn, user_ids: set[str]) -> set[str]:
    found: set[str] = set()
    pending = list(user_ids)
    for start in range(0, len(pending), 500):
        chunk = pending[start : start + 500]
        marks = ",".join("?" * len(chunk))
        txn.execute(f"SELECT user_id FROM users WHERE user_id IN ({marks})", chunk)
        found.update(row[0] for row in txn.fetchall())
    return found
