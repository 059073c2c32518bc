"""Retention on each backend: prune passes with a fake clock, the roll-up
that keeps /stats unchanged, the pending quota, two pruners at once."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from dkserver.metrics import Metrics
from dkserver.retention import Policy, Pruner
from dkserver.store import NewMessage, Store
from dkserver.store.quota import RECHECK, PendingQuota, PendingQuotaExceeded
from dkserver.store.retention import Cutoffs
from dkserver.store.writer import GroupWriter

S = 10**9
# 2026-11-26 12:00:00 UTC
T0 = 1_795_694_400 * S
HOUR = 3600 * S
DAY = 24 * HOUR

POLICY = Policy(retention_days=30, pending_max_days=90, rollup_days=30, batch=500)


def msg(to: str, received_ns: int, sender: str = "alice", content="hi") -> NewMessage:
    return NewMessage(
        from_user=sender,
        to_user=to,
        timestamp="2026-11-26T12:00:00Z",
        content=content,
        is_broadcast=to == "broadcast",
        signature=None,
        is_forward_message=False,
        received_ns=received_ns,
    )


def pruner(store, now_ns: int, policy: Policy = POLICY, **kw) -> Pruner:
    return Pruner(store, policy, time_ns=lambda: now_ns, **kw)


async def users(store, *names: str) -> None:
    for name in names:
        await store.users.create(name, name.title(), "k")


def ids_of(sql, db_path) -> list[int]:
    return [r[0] for r in sql(db_path, "SELECT id FROM messages ORDER BY id")]


@pytest_twisted.ensureDeferred
async def test_delivered_direct_messages_go_after_retention(store, sql, db_path):
    await users(store, "alice", "bob")
    old, recent, pending = await store.messages.add_many(
        [msg("bob", T0), msg("bob", T0), msg("bob", T0)]
    )
    await store.messages.mark_delivered([old], delivered_ns=T0 + HOUR)
    # received as long ago, delivered only 10 days later: kept 30 days from then
    await store.messages.mark_delivered([recent], delivered_ns=T0 + 10 * DAY)
    metrics = Metrics()

    report = await pruner(store, T0 + 30 * DAY + 2 * HOUR, metrics=metrics).run_pass()

    assert report.deleted == {"messages": 1}
    assert report.dropped_pending == 0
    assert ids_of(sql, db_path) == [recent, pending]
    assert metrics.pruned_rows.labels(table="messages")._value.get() == 1
    # before the cutoff nothing goes
    again = await pruner(store, T0 + 39 * DAY).run_pass()
    assert again.deleted == {}
    report = await pruner(store, T0 + 41 * DAY).run_pass()
    assert report.deleted == {"messages": 1}
    assert ids_of(sql, db_path) == [pending]


@pytest_twisted.ensureDeferred
async def test_pending_messages_dropped_after_their_bound_and_counted(
    store, sql, db_path
):
    await users(store, "alice", "bob", "carol")
    await store.messages.add_many([msg("bob", T0), msg("carol", T0)])
    (c,) = await store.messages.add_many([msg("bob", T0 + 5 * DAY)])
    metrics = Metrics()

    assert (await pruner(store, T0 + 89 * DAY).run_pass()).dropped_pending == 0
    report = await pruner(store, T0 + 91 * DAY, metrics=metrics).run_pass()

    assert report.dropped_pending == 2
    assert report.deleted == {"messages": 2}
    assert ids_of(sql, db_path) == [c]
    assert metrics.pending_dropped._value.get() == 2
    assert await store.messages.pending_direct("bob") == [await store.messages.get(c)]
    assert ("2026-11-26", "pending_dropped", 0, 2) in await store.retention.rollups()


@pytest_twisted.ensureDeferred
async def test_broadcasts_go_with_their_deliveries_counted_from_sending(
    store, sql, db_path
):
    await users(store, "alice", "bob", "carol")
    old, new = await store.messages.add_many(
        [msg("broadcast", T0), msg("broadcast", T0 + 20 * DAY)]
    )
    await store.messages.record_broadcast_deliveries(
        [(old, "bob"), (old, "carol"), (new, "bob")]
    )
    # carol never fetched the new one: the floor logic still gives it to her
    report = await pruner(store, T0 + 31 * DAY).run_pass()

    assert report.deleted == {"messages": 1, "broadcast_deliveries": 2}
    assert ids_of(sql, db_path) == [new]
    assert sql(db_path, "SELECT message_id, user_id FROM broadcast_deliveries") == [
        (new, "bob")
    ]
    assert [m.id for m in await store.messages.undelivered_broadcasts("carol")] == [new]
    assert await store.messages.undelivered_broadcasts("bob") == []


@pytest_twisted.ensureDeferred
async def test_a_new_user_gets_no_old_broadcast_after_a_prune(store):
    """The broadcast floor of PROTOCOL: only broadcasts sent since one
    registered; pruning the old ones changes nothing about that."""
    await users(store, "alice")
    await store.messages.add_many([msg("broadcast", T0), msg("broadcast", T0 + DAY)])
    await pruner(store, T0 + 30 * DAY + HOUR).run_pass()
    await users(store, "dave")  # registered now, after both were sent
    assert await store.messages.undelivered_broadcasts("dave") == []


@pytest_twisted.ensureDeferred
async def test_small_batches_finish_the_work(store, sql, db_path):
    await users(store, "alice", "bob")
    ids = await store.messages.add_many([msg("bob", T0 + i) for i in range(7)])
    await store.messages.mark_delivered(ids, delivered_ns=T0)
    await store.messages.add_many([msg("broadcast", T0 + i) for i in range(5)])
    policy = dataclasses.replace(POLICY, batch=2)

    report = await pruner(store, T0 + 31 * DAY, policy).run_pass()

    assert report.deleted == {"messages": 12}
    assert report.batches >= 7  # 4 + 3 batches of two rows at least
    assert ids_of(sql, db_path) == []


@pytest_twisted.ensureDeferred
async def test_off_keeps_everything(store, sql, db_path):
    await users(store, "alice", "bob")
    ids = await store.messages.add_many([msg("bob", T0), msg("bob", T0)])
    await store.messages.mark_delivered(ids[:1], delivered_ns=T0)
    off = Policy(None, None, None, 500)
    report = await pruner(store, T0 + 1000 * DAY, off).run_pass()
    assert report.deleted == {} and report.batches == 0
    assert ids_of(sql, db_path) == ids


async def _history(store: Store) -> None:
    """Sessions, events and messages spread over 60 days."""
    await users(store, "alice", "bob", "carol")
    for day in range(0, 60, 3):
        start = T0 + day * DAY + (day % 5) * HOUR
        sid = f"s{day}"
        await store.analytics.start_session(sid, "alice", start)
        ids = await store.messages.add_many(
            [msg("bob", start + S), msg("broadcast", start + 2 * S)]
        )
        await store.messages.mark_delivered(ids[:1], delivered_ns=start + 3 * S)
        await store.messages.record_broadcast_deliveries([(ids[1], "carol")])
        await store.analytics.record_message_events(
            [(sid, "alice", False, start + S), (sid, "alice", True, start + 2 * S)]
        )
        await store.analytics.end_session(sid, start + (day + 1) * 60 * S)
    # one still open, one pending message never delivered
    await store.analytics.start_session("open", "carol", T0 + 59 * DAY)
    await store.messages.add_many([msg("carol", T0 + DAY)])


@pytest_twisted.ensureDeferred
async def test_stats_are_the_same_before_and_after_the_roll_up(store, sql, db_path):
    await _history(store)
    now = T0 + 61 * DAY
    before = await store.analytics.stats(now)
    counts_before = {
        t: sql(db_path, f"SELECT COUNT(*) FROM {t}")[0][0]
        for t in ("messages", "sessions", "message_events")
    }

    report = await pruner(store, now).run_pass()

    after = await store.analytics.stats(now)
    assert after == before
    counts_after = {
        t: sql(db_path, f"SELECT COUNT(*) FROM {t}")[0][0]
        for t in ("messages", "sessions", "message_events")
    }
    # the prune did delete most of it (else this test proves nothing)
    for table in counts_before:
        assert counts_after[table] < counts_before[table] / 2, table
    assert (
        report.deleted["sessions"]
        == counts_before["sessions"] - counts_after["sessions"]
    )
    # a later pass (the pending message's 90 days) keeps them the same too
    later = T0 + 95 * DAY
    before = await store.analytics.stats(later)
    report = await pruner(store, later).run_pass()
    assert report.dropped_pending == 1
    assert await store.analytics.stats(later) == before
    assert sql(db_path, "SELECT COUNT(*) FROM message_events")[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_dry_run_counts_and_changes_nothing(store, sql, db_path):
    await _history(store)
    now = T0 + 61 * DAY
    p = pruner(store, now)
    counts = await p.dry_run()
    assert sql(db_path, "SELECT COUNT(*) FROM stats_daily") == [(0,)]
    rows = sql(db_path, "SELECT COUNT(*) FROM messages")
    report = await p.run_pass()
    assert sql(db_path, "SELECT COUNT(*) FROM messages") != rows
    assert (
        counts["delivered"] + counts["broadcasts"] + counts["pending"]
        == (report.deleted["messages"])
    )
    assert counts["broadcast_deliveries"] == report.deleted["broadcast_deliveries"]
    assert counts["events"] == report.deleted["message_events"]
    assert counts["sessions"] == report.deleted["sessions"]


@pytest_twisted.ensureDeferred
async def test_two_pruners_at_once_never_count_twice(store, db_path, sql):
    """Two processes (two pools on one database): every row is deleted and
    rolled up once, whichever got it."""
    await _history(store)
    now = T0 + 61 * DAY
    expected = await store.analytics.stats(now)
    other = await Store.open(db_path, reactor)
    try:
        policy = dataclasses.replace(POLICY, batch=3)
        reports = await gatherResults(
            [
                Deferred.fromCoroutine(pruner(s, now, policy).run_pass())
                for s in (store, other)
            ]
        )
        # on PostgreSQL the second may find the lock taken and stop: run
        # both again until neither is busy
        while any(r.busy for r in reports):
            reports = [await pruner(s, now, policy).run_pass() for s in (store, other)]
    finally:
        await other.close()
    assert await store.analytics.stats(now) == expected
    rolled = sql(
        db_path,
        "SELECT COALESCE(SUM(count), 0) FROM stats_daily"
        " WHERE metric IN ('direct_messages', 'broadcast_messages')",
    )[0][0]
    left = sql(db_path, "SELECT COUNT(*) FROM messages")[0][0]
    assert rolled + left == 41  # 20 days x 2 + the pending one


def test_cutoffs_off_and_on():
    c = Cutoffs.at(T0, 30, None, 7)
    assert c.of("delivered") == c.of("broadcasts") == T0 - 30 * DAY
    assert c.of("pending") is None
    assert c.of("sessions") == c.of("events") == T0 - 7 * DAY


# -- the pending quota ---------------------------------------------------------


class _Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_twisted.ensureDeferred
async def test_quota_of_messages_refuses_and_stores_nothing(store, sql, db_path):
    await users(store, "alice", "bob", "carol")
    clock = _Monotonic()
    quota = PendingQuota(3, None, monotonic=clock)
    writer = GroupWriter(store.pool, reactor, quota=quota)
    ids = [await writer.submit_message(msg("bob", T0 + i), None) for i in range(3)]
    with pytest.raises(PendingQuotaExceeded) as refused:
        await writer.submit_message(msg("bob", T0 + 3), None)
    assert "3 messages" in str(refused.value) and "'bob'" in str(refused.value)
    assert ids_of(sql, db_path) == ids  # nothing stored
    # others are not limited by bob's mailbox
    assert await writer.submit_message(msg("carol", T0), None)
    assert await writer.submit_message(msg("broadcast", T0), None)
    # a delivery elsewhere (another node, no word to this writer): the
    # refusal stands for RECHECK, then the database is asked again
    await store.messages.mark_delivered([ids[0]])
    with pytest.raises(PendingQuotaExceeded):
        await writer.submit_message(msg("bob", T0 + 4), None)
    loads = quota.loads
    clock.now += RECHECK + 0.1
    assert await writer.submit_message(msg("bob", T0 + 5), None)
    assert quota.loads == loads + 1
    # full again: each confirmed refusal doubles the wait before the next
    # database check, so a hammering sender costs few queries
    for _ in range(5):
        with pytest.raises(PendingQuotaExceeded):
            await writer.submit_message(msg("bob", T0 + 6), None)
    assert quota.loads == loads + 2
    clock.now += RECHECK + 0.1  # past the first wait: asked again, still full
    with pytest.raises(PendingQuotaExceeded):
        await writer.submit_message(msg("bob", T0 + 6), None)
    assert quota.loads == loads + 3
    clock.now += RECHECK + 0.1  # the wait is 2 s now
    with pytest.raises(PendingQuotaExceeded):
        await writer.submit_message(msg("bob", T0 + 6), None)
    assert quota.loads == loads + 3
    # a delivery through this writer ends the wait at once
    writer.mark_delivered(ids[1], "bob")
    assert await writer.submit_message(msg("bob", T0 + 7), None)
    assert quota.loads == loads + 4
    await writer.close()


@pytest_twisted.ensureDeferred
async def test_quota_of_bytes_counts_what_is_already_stored(store, db_path):
    await users(store, "alice", "bob")
    # stored before this writer existed (another node, or before a restart)
    await store.messages.add_many([msg("bob", T0, content="é" * 40)])  # 80 bytes
    writer = GroupWriter(store.pool, reactor, quota=PendingQuota(None, 100))
    assert await writer.submit_message(msg("bob", T0, content="x" * 20), None)
    with pytest.raises(PendingQuotaExceeded) as refused:
        await writer.submit_message(msg("bob", T0, content="y"), None)
    assert "100 bytes" in str(refused.value)
    await writer.close()


@pytest_twisted.ensureDeferred
async def test_quota_within_one_batch(store, sql, db_path):
    await users(store, "alice", "bob")
    writer = GroupWriter(store.pool, reactor, quota=PendingQuota(2, None))
    results = await gatherResults(
        [
            writer.submit_message(msg("bob", T0 + i), None).addErrback(
                lambda f: f.trap(PendingQuotaExceeded) and "refused"
            )
            for i in range(4)
        ]
    )
    assert results[2:] == ["refused", "refused"]
    assert len(ids_of(sql, db_path)) == 2
    await writer.close()
