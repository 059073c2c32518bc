"""AnalyticsStore: sessions, message events, statistics."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from dkserver.store import NewMessage, Store

S = 10**9
# 2026-11-26 12:00:00 UTC
NOW = 1_795_694_400 * S
HOUR = 3600 * S
DAY = 24 * HOUR
#: As the original server writes a session row (no node_id, a version 6 column).
ORIGINAL_SESSION_INSERT = (
    "INSERT INTO sessions (session_id, user_id, start_time, end_time, duration) VALUES"
)


@pytest_twisted.ensureDeferred
async def test_stats_on_empty_database(store):
    assert await store.analytics.stats(NOW) == {
        "daily_active_users": 0,
        "weekly_active_users": 0,
        "messages": {
            "all_time": {"direct": 0, "broadcast": 0, "total": 0},
            "last_24h": {"direct": 0, "broadcast": 0, "total": 0},
        },
        "sessions": {
            "count": 0,
            "open": 0,
            "avg_duration_s": None,
            "max_duration_s": None,
            "p50_duration_s": None,
        },
        "peak_hour": None,
    }


@pytest_twisted.ensureDeferred
async def test_session_rows_written_in_original_format(store, sql, db_path):
    await store.users.create("a", "A", "k")
    await store.analytics.start_session("s1", "a", NOW + 5)
    await store.analytics.end_session("s1", NOW + 90 * S + 999_999_999)
    assert sql(db_path, "SELECT start_time, end_time, duration FROM sessions") == [
        (
            "2026-11-26 12:00:00.000000005+00:00",
            "2026-11-26 12:01:30.999999999+00:00",
            90,
        )
    ]
    await store.analytics.end_session("s1", NOW + DAY)  # already closed: no-op
    await store.analytics.end_session("unknown", NOW)
    assert sql(db_path, "SELECT duration FROM sessions") == [(90,)]


@pytest_twisted.ensureDeferred
async def test_end_open_sessions_closes_only_open_ones(store, sql, db_path):
    await store.analytics.start_session("s1", "a", NOW - 100 * S)
    await store.analytics.start_session("s2", "b", NOW - 50 * S)
    await store.analytics.end_session("s1", NOW - 90 * S)
    assert await store.analytics.end_open_sessions(NOW) == 1
    assert await store.analytics.end_open_sessions(NOW) == 0
    rows = sql(db_path, "SELECT session_id, duration FROM sessions ORDER BY session_id")
    assert rows == [("s1", 10), ("s2", 50)]


@pytest_twisted.ensureDeferred
async def test_stats_from_sessions_events_and_messages(store, sql, db_path):
    for uid in ("a", "b", "c", "d"):
        await store.users.create(uid, uid, "k", registered_ns=NOW - 30 * DAY)
    a = store.analytics
    # a: ended 2 h ago; b: ended 3 days ago; c: still open since 10 days ago;
    # d: ended 8 days ago (outside both windows)
    await a.start_session("sa", "a", NOW - 3 * HOUR)
    await a.end_session("sa", NOW - 2 * HOUR)  # 3600 s
    await a.start_session("sb", "b", NOW - 3 * DAY - 60 * S)
    await a.end_session("sb", NOW - 3 * DAY)  # 60 s
    await a.start_session("sc", "c", NOW - 10 * DAY)
    await a.start_session("sd", "d", NOW - 8 * DAY - 30 * S)
    await a.end_session("sd", NOW - 8 * DAY)  # 30 s
    await a.record_message_events(
        [
            ("sa", "a", False, NOW - 3 * HOUR + 1),  # 09 UTC
            ("sa", "a", True, NOW - 3 * HOUR + 2),  # 09 UTC
            ("sc", "c", False, NOW - 2 * HOUR),  # 10 UTC
        ]
    )
    # a legacy row from the Go server on a UTC-3 host: 06:30-03:00 is 09:30 UTC
    sql(
        db_path,
        "INSERT INTO message_events (session_id, user_id, is_broadcast, timestamp)"
        " VALUES ('sc', 'c', 0, '2026-11-25 06:30:00.1234567-03:00')",
    )

    def m(sender, to, received_ns):
        return NewMessage(
            sender,
            to,
            "2026-11-26T00:00:00Z",
            "x",
            to == "broadcast",
            None,
            False,
            received_ns,
        )

    await store.messages.add_many(
        [
            m("a", "b", NOW - HOUR),
            m("a", "broadcast", NOW - 2 * HOUR),
            m("b", "a", NOW - 2 * DAY),
            m("c", "broadcast", NOW - 3 * DAY),
        ]
    )

    stats = await a.stats(NOW)
    assert stats["daily_active_users"] == 2  # a, and c still connected
    assert stats["weekly_active_users"] == 3  # plus b
    assert stats["messages"] == {
        "all_time": {"direct": 2, "broadcast": 2, "total": 4},
        "last_24h": {"direct": 1, "broadcast": 1, "total": 2},
    }
    assert stats["sessions"] == {
        "count": 4,
        "open": 1,
        "avg_duration_s": pytest.approx((3600 + 60 + 30) / 3),
        "max_duration_s": 3600,
        "p50_duration_s": 60,
    }
    assert stats["peak_hour"] == 9


@pytest_twisted.ensureDeferred
async def test_legacy_session_text_with_offset_is_filtered_by_instant(
    store, sql, db_path
):
    # Go-written rows: other UTC offsets, trimmed fractions, or no zone at all.
    # Ended 2026-11-25 13:00 UTC (23 h before NOW): text sorts before the
    # cutoff "2026-11-25 12:00", yet it is inside the window.
    sql(
        db_path,
        f"{ORIGINAL_SESSION_INSERT} ('in', 'x', '2026-11-25 07:00:00.5-03:00',"
        " '2026-11-25 10:00:00.1234567-03:00', 10800)",
    )
    # Ended 2026-11-25 11:00 UTC (25 h before): text sorts after the cutoff,
    # yet it is outside the window.
    sql(
        db_path,
        f"{ORIGINAL_SESSION_INSERT} ('out', 'y', '2026-11-25 15:30:00+05:30',"
        " '2026-11-25 16:30:00+05:30', 3600)",
    )
    # zone-less (UTC) and ended 1 h ago
    sql(
        db_path,
        f"{ORIGINAL_SESSION_INSERT} ('naive', 'z', '2026-11-26 10:00:00',"
        " '2026-11-26 11:00:00', 3600)",
    )
    stats = await store.analytics.stats(NOW)
    assert (stats["daily_active_users"], stats["weekly_active_users"]) == (2, 3)


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_startup_closes_only_sessions_older_than_the_process(store, db_path):
    import sqlite3

    await store.users.create("u", "U", "k")
    await store.analytics.start_session("old", "u", NOW - 10 * 10**9)
    await store.analytics.start_session("new", "u", NOW + 10**9)
    assert (
        await store.analytics.end_open_sessions(NOW + 2 * 10**9, started_before_ns=NOW)
        == 1
    )
    rows = dict(
        sqlite3.connect(db_path).execute("SELECT session_id, end_time FROM sessions")
    )
    assert rows["old"] is not None and rows["new"] is None


# -- sessions of several nodes (schema version 6) ---------------------------------


def open_sessions_of(store, sql, db_path) -> dict[str, str | None]:
    """session_id -> node_id of the sessions still open."""
    rows = sql(
        db_path, "SELECT session_id, node_id FROM sessions WHERE end_time IS NULL"
    )
    return dict(rows)


@pytest_twisted.ensureDeferred
async def test_session_rows_carry_the_node_id(store, sql, db_path):
    await store.analytics.start_session("s1", "a", NOW, node_id="node-a")
    await store.analytics.start_session("s2", "a", NOW)
    rows = sql(db_path, "SELECT session_id, node_id FROM sessions ORDER BY session_id")
    assert rows == [("s1", "node-a"), ("s2", None)]


@pytest_twisted.ensureDeferred
async def test_a_restarting_node_closes_its_own_and_unowned_sessions_only(
    store, sql, db_path
):
    a = store.analytics
    await a.start_session("mine", "u", NOW - 60 * S, node_id="node-a")
    await a.start_session("theirs", "u", NOW - 60 * S, node_id="node-b")
    # written before version 6: no node, by a process that is gone
    await a.start_session("legacy", "u", NOW - 60 * S)
    await a.start_session("mine-live", "u", NOW + S, node_id="node-a")

    closed = await a.end_open_sessions(
        NOW + 2 * S, started_before_ns=NOW, node_id="node-a"
    )
    assert closed == 2
    assert open_sessions_of(store, sql, db_path) == {
        "theirs": "node-b",
        "mine-live": "node-a",
    }
    durations = dict(sql(db_path, "SELECT session_id, duration FROM sessions"))
    assert (durations["mine"], durations["legacy"]) == (62, 62)


@pytest_twisted.ensureDeferred
async def test_a_single_process_closes_every_node_s_sessions(store, sql, db_path):
    # its node id may have changed (another port): no node id, no filter
    a = store.analytics
    await a.start_session("old-port", "u", NOW - 60 * S, node_id="host:8443")
    await a.start_session("legacy", "u", NOW - 60 * S)
    assert await a.end_open_sessions(NOW, started_before_ns=NOW) == 2
    assert open_sessions_of(store, sql, db_path) == {}


@pytest_twisted.ensureDeferred
async def test_a_dead_node_s_sessions_are_closed_once_by_the_survivors(
    store, sql, db_path
):
    a = store.analytics
    await a.start_session("dead-1", "u", NOW - 30 * S, node_id="node-b")
    await a.start_session("dead-2", "v", NOW - 20 * S, node_id="node-b")
    await a.start_session("done", "v", NOW - 90 * S, node_id="node-b")
    await a.end_session("done", NOW - 80 * S)
    await a.start_session("alive", "u", NOW - 30 * S, node_id="node-a")
    await a.start_session("legacy", "u", NOW - 30 * S)

    assert await a.end_node_sessions("node-b", NOW) == 2
    # a second survivor, later: nothing left, the first close stands
    assert await a.end_node_sessions("node-b", NOW + 50 * S) == 0
    assert open_sessions_of(store, sql, db_path) == {
        "alive": "node-a",
        "legacy": None,
    }
    rows = dict(
        (sid, (end, duration))
        for sid, end, duration in sql(
            db_path, "SELECT session_id, end_time, duration FROM sessions"
        )
    )
    assert rows["dead-1"] == ("2026-11-26 12:00:00.000000000+00:00", 30)
    assert rows["dead-2"][1] == 20
    assert rows["done"][1] == 10


@pytest_twisted.ensureDeferred
async def test_survivors_closing_a_dead_node_at_once_agree(db_path, store, sql):
    """Several survivors, each with its own pool, close one node's sessions
    at the same moment: every session is closed exactly once."""
    for i in range(40):
        await store.analytics.start_session(f"s{i}", "u", NOW - S, node_id="dead")
    survivors = [await Store.open(db_path, reactor) for _ in range(4)]
    try:
        counts = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(
                    s.analytics.end_node_sessions("dead", NOW + i * S)
                )
                for i, s in enumerate(survivors)
            ]
        )
    finally:
        for s in survivors:
            await s.close()
    assert sum(counts) == 40
    assert open_sessions_of(store, sql, db_path) == {}
    # each row carries the end time of the one survivor that closed it
    ends = sql(db_path, "SELECT end_time, duration FROM sessions")
    assert {duration for _, duration in ends} <= {1, 2, 3, 4}
