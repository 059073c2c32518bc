"""AnalyticsStore: sessions, message events, statistics."""

from __future__ import annotations

import pytest
import pytest_twisted

from dkserver.store import NewMessage

S = 10**9
# 2026-11-26 12:00:00 UTC
NOW = 1_795_694_400 * S
HOUR = 3600 * S
DAY = 24 * HOUR


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
        "INSERT INTO sessions VALUES ('in', 'x', '2026-11-25 07:00:00.5-03:00',"
        " '2026-11-25 10:00:00.1234567-03:00', 10800)",
    )
    # Ended 2026-11-25 11:00 UTC (25 h before): text sorts after the cutoff,
    # yet it is outside the window.
    sql(
        db_path,
        "INSERT INTO sessions VALUES ('out', 'y', '2026-11-25 15:30:00+05:30',"
        " '2026-11-25 16:30:00+05:30', 3600)",
    )
    # zone-less (UTC) and ended 1 h ago
    sql(
        db_path,
        "INSERT INTO sessions VALUES ('naive', 'z', '2026-11-26 10:00:00',"
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
