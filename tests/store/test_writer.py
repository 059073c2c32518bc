"""Group commit on each backend: many submissions, few transactions."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults

from dkserver.store.engine import COPY_THRESHOLD
from dkserver.store.errors import NulNotStorable, StoreUnavailable
from dkserver.store.messages import NewMessage
from dkserver.store.writer import GroupWriter


class _Inspect:
    """``con.execute(q).fetchone()`` over the ``sql`` fixture, either backend."""

    def __init__(self, sql, db_path: str) -> None:
        self._sql, self._db = sql, db_path

    def execute(self, statement: str, params: tuple = ()) -> _Inspect:
        self._rows = self._sql(self._db, statement, params)
        return self

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows


def message(to: str, n: int, sender: str = "alice") -> NewMessage:
    return NewMessage(
        from_user=sender,
        to_user=to,
        timestamp=f"2026-11-26T01:45:42.{n:09d}-03:00",
        content=f"m{n}",
        is_broadcast=to == "broadcast",
        signature=None,
        is_forward_message=False,
        received_ns=1_795_668_342_000_000_000 + n,
    )


@pytest_twisted.ensureDeferred
async def test_concurrent_submissions_share_transactions(store, sql, db_path):
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    writer = GroupWriter(store.pool, reactor)
    writer.start_session("s1", "alice", 1_795_668_342_000_000_000)
    ids = await gatherResults(
        [writer.submit_message(message("bob", i), "s1") for i in range(500)]
    )
    assert ids == sorted(ids) and len(set(ids)) == 500
    assert writer.batches <= 3  # one reactor turn's submissions → one batch
    for mid in ids[:10]:
        writer.mark_delivered(mid)
    await writer.flush()
    con = _Inspect(sql, db_path)
    assert con.execute(
        "SELECT count(*) FROM messages WHERE status='delivered'"
    ).fetchone() == (10,)
    assert con.execute(
        "SELECT count(*) FROM message_events WHERE session_id='s1'"
    ).fetchone() == (500,)
    rows = con.execute("SELECT timestamp FROM messages ORDER BY id LIMIT 1").fetchone()
    assert rows == ("2026-11-26 01:45:42.000000000-03:00",)


@pytest_twisted.ensureDeferred
async def test_unknown_recipient_is_refused_without_failing_the_batch(
    store, sql, db_path
):
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    writer = GroupWriter(store.pool, reactor)
    results = await gatherResults(
        [
            writer.submit_message(message("bob", 1), None),
            writer.submit_message(message("nobody", 2), None),
            writer.submit_message(message("broadcast", 3), None),
        ]
    )
    assert results[0] is not None and results[1] is None and results[2] is not None
    writer.record_broadcast_delivery(results[2], "bob")
    writer.record_broadcast_delivery(results[2], "bob")
    await writer.flush()
    con = _Inspect(sql, db_path)
    assert con.execute("SELECT count(*) FROM broadcast_deliveries").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM messages").fetchone() == (2,)


@pytest_twisted.ensureDeferred
async def test_session_end_is_written_after_its_events(store, sql, db_path):
    await store.users.create("alice", "A", "k")
    writer = GroupWriter(store.pool, reactor)
    start = 1_795_668_342_000_000_000
    writer.start_session("s2", "alice", start)
    writer.submit_message(message("broadcast", 1), "s2")
    writer.end_session("s2", start + 5_500_000_000)
    await writer.flush()
    con = _Inspect(sql, db_path)
    assert con.execute(
        "SELECT duration FROM sessions WHERE session_id='s2'"
    ).fetchone() == (5,)
    assert con.execute("SELECT is_broadcast FROM message_events").fetchall() == [(1,)]


@pytest.mark.parametrize("real", [1, COPY_THRESHOLD + 4])
@pytest_twisted.ensureDeferred
async def test_missing_session_costs_only_its_analytics_row(store, sql, db_path, real):
    """With few events (one INSERT) or many (COPY on PostgreSQL)."""
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    writer = GroupWriter(store.pool, reactor)
    writer.start_session("real", "alice", 1_795_668_342_000_000_000)
    ids = await gatherResults(
        [writer.submit_message(message("bob", i), "real") for i in range(real)]
        + [writer.submit_message(message("bob", real), "never-started")]
    )
    assert all(ids) and writer.batches == 1
    con = _Inspect(sql, db_path)
    assert con.execute("SELECT count(*) FROM messages").fetchone() == (real + 1,)
    assert (
        con.execute("SELECT session_id FROM message_events").fetchall()
        == [("real",)] * real
    )


@pytest_twisted.ensureDeferred
async def test_a_burst_larger_than_one_batch_keeps_order_and_bookkeeping(
    store, sql, db_path, monkeypatch
):
    from dkserver.store import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_BATCH", 7)
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    writer = GroupWriter(store.pool, reactor)
    first = await writer.submit_message(message("bob", 0), None)
    writer.mark_delivered(first)
    ids = await gatherResults(
        [writer.submit_message(message("bob", i), None) for i in range(1, 30)]
    )
    assert ids == list(range(first + 1, first + 30))
    await writer.flush()
    assert writer.batches >= 5  # 29 messages in batches of 7
    con = _Inspect(sql, db_path)
    assert con.execute(
        "SELECT status FROM messages WHERE id = ?", (first,)
    ).fetchone() == ("delivered",)


@pytest_twisted.ensureDeferred
async def test_unstorable_message_fails_alone_not_its_batch(store, sql, db_path):
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    writer = GroupWriter(store.pool, reactor)
    nul = dataclasses.replace(message("bob", 2), signature="a\0b")
    results = await gatherResults(
        [
            writer.submit_message(message("bob", 1), None),
            writer.submit_message(nul, None).addErrback(lambda f: f.value),
            writer.submit_message(message("bob", 3), None),
        ]
    )
    stored = _Inspect(sql, db_path).execute(
        "SELECT content, signature FROM messages ORDER BY id"
    )
    if store.engine.refuses_nul:
        assert isinstance(results[1], NulNotStorable)
        assert stored.fetchall() == [("m1", ""), ("m3", "")]
    else:
        assert stored.fetchall() == [("m1", ""), ("m2", "a\0b"), ("m3", "")]
    assert isinstance(results[0], int) and isinstance(results[2], int)


class _Outage:
    """The store's database, unreachable for the next ``failures`` interactions."""

    def __init__(self, db) -> None:
        self._db = db
        self.engine = db.engine
        self.failures = 0

    def runInteraction(self, func, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            return fail(StoreUnavailable("the test cut the connection"))
        return self._db.runInteraction(func, *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_an_outage_refuses_its_messages_but_keeps_delivery_marks(
    store, sql, db_path
):
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    outage = _Outage(store.pool)
    writer = GroupWriter(outage, reactor)
    writer.start_session("s1", "alice", 1_795_668_342_000_000_000)
    first = await writer.submit_message(message("bob", 1), "s1")
    outage.failures = 1
    writer.mark_delivered(first)
    writer.end_session("s1", 1_795_668_343_000_000_000)
    with pytest.raises(StoreUnavailable):
        await writer.submit_message(message("bob", 2), "s1")
    assert writer.unavailable
    await writer.flush()  # the retry: the marks, not the refused message
    assert not writer.unavailable
    con = _Inspect(sql, db_path)
    assert con.execute("SELECT id, status FROM messages").fetchall() == [
        (first, "delivered")
    ]
    assert con.execute(
        "SELECT duration FROM sessions WHERE session_id = 's1'"
    ).fetchone() == (1,)


@pytest_twisted.ensureDeferred
async def test_writer_counts_what_the_backlog_gauge_needs(store, sql, db_path):
    """direct_stored / direct_delivered (dkserver.gauges) follow the rows:
    broadcasts and unknown recipients are not stored direct messages, and a
    second mark of a delivered message counts once; every commit is timed."""
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    durations: list[float] = []
    writer = GroupWriter(store.pool, reactor, commit_seconds=durations.append)
    ids = await gatherResults(
        [writer.submit_message(message("bob", i), None) for i in range(5)]
        + [writer.submit_message(message("broadcast", 9), None)]
        + [writer.submit_message(message("nobody", 10), None)]
    )
    assert ids[-1] is None
    assert (writer.direct_stored, writer.direct_delivered) == (5, 0)
    assert await store.messages.pending_count() == 5
    writer.mark_delivered(ids[0])
    writer.mark_delivered(ids[1])
    await writer.flush()
    writer.mark_delivered(ids[0])  # again: already delivered
    await writer.flush()
    assert (writer.direct_stored, writer.direct_delivered) == (5, 2)
    assert await store.messages.pending_count() == 3
    assert len(durations) == writer.batches >= 3
    assert all(0 < d < 60 for d in durations)


@pytest_twisted.ensureDeferred
async def test_database_size_is_the_backend_s_own_figure(store, sql, db_path):
    size = await store.database_size()
    if store.is_postgresql:
        [(actual,)] = sql(db_path, "SELECT pg_database_size(current_database())", ())
        assert size == actual
    else:
        import os

        wal = f"{db_path}-wal"
        expected = os.path.getsize(db_path) + (
            os.path.getsize(wal) if os.path.exists(wal) else 0
        )
        assert size == expected > 0
